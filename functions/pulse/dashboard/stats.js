// The stats panels of the dashboard, one PulsePanels.define each. Numbers and
// charts carry their values as data attributes, so what is drawn can be read
// back (the dashboard tests do).
"use strict";

const PulseStats = (() => {
  const PERCENT = /^(week_[1-9][0-9]*|conversion_from_start|conversion_from_previous)$/;
  let liveAbort = null;

  function el(tag, attrs = {}, text) {
    const node = Object.assign(document.createElement(tag), attrs);
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function table(columns, rows, id) {
    const t = el("table", id ? {id} : {});
    const head = t.createTHead().insertRow();
    for (const c of columns) head.appendChild(el("th", {}, c));
    const body = t.createTBody();
    for (const r of rows) {
      const tr = body.insertRow();
      for (const c of columns) {
        const td = tr.insertCell();
        const v = r[c];
        td.textContent = v === undefined || v === null ? "" : (PERCENT.test(c) ? Number(v).toFixed(1) : String(v));
        td.dataset.field = c;
      }
    }
    return t;
  }

  function numbers(id, fields, data) {
    const dl = el("dl", {id, className: "numbers"});
    for (const [field, label] of fields) {
      const box = el("div");
      box.appendChild(el("dt", {}, label));
      const dd = el("dd", {}, data[field] === undefined ? "–" : String(data[field]));
      dd.dataset.field = field;
      box.appendChild(dd);
      dl.appendChild(box);
    }
    return dl;
  }

  function chart(id, draw, points) {
    const box = el("div", {id, className: "chart"});
    draw(box, points);
    return box;
  }

  const SUMMARY = [["events_last_5m", "Events, last 5 min"], ["users_last_5m", "Users, last 5 min"],
                   ["events_per_second_1m", "Events/s, last min"], ["events_today", "Events today"]];
  const OVERVIEW = [["events", "Events"], ["unique_users", "Users"], ["unique_sessions", "Sessions"],
                    ["unique_event_types", "Event types"], ["bot_events_excluded", "Bot events left out"]];

  async function live(ctx, target) {
    if (liveAbort) liveAbort.abort();
    if (ctx.state.live === "off") return;
    liveAbort = new AbortController();
    try {
      const response = await fetch("/v1/stats/live?" + ctx.query(), {headers: PulseApi.credentials(),
                                                                        signal: liveAbort.signal});
      if (!response.ok) return;
      const reader = response.body.getReader();
      const decoder = new TextDecoder();
      let buffer = "";
      for (;;) {
        const {value, done} = await reader.read();
        if (done) break;
        buffer += decoder.decode(value, {stream: true});
        let cut;
        while ((cut = buffer.indexOf("\n\n")) >= 0) {
          const data = buffer.slice(0, cut).split("\n").find(l => l.startsWith("data: "));
          buffer = buffer.slice(cut + 2);
          if (data && target.isConnected) target.replaceWith(target = numbers("summary", SUMMARY, JSON.parse(data.slice(6))));
        }
      }
    } catch (e) {
      // the live view stops quietly when the page moves on (abort) or the connection ends
    }
  }

  PulsePanels.define({
    id: "live", title: "Live", wide: true,
    load: ctx => Promise.all([PulseApi.get("/v1/stats/summary?" + ctx.query()),
                              PulseApi.get("/v1/stats/overview?" + ctx.query())]),
    render(body, [summary, overview], ctx) {
      const now = numbers("summary", SUMMARY, summary);
      body.append(now, numbers("overview", OVERVIEW, overview));
      live(ctx, now);
    },
    isEmpty: ([summary, overview]) => overview.events === 0 && summary.events_last_5m === 0,
  });

  PulsePanels.define({
    id: "events", title: "Events over time",
    load: ctx => PulseApi.get("/v1/stats/events?" + ctx.query({group_by: "day"})),
    render: (body, rows) => body.append(chart("events-chart", PulseCharts.columns,
                                              rows.map(r => ({label: r.bucket, value: r.events})))),
    isEmpty: rows => rows.length === 0,
  });

  PulsePanels.define({
    id: "dau", title: "Daily active users",
    load: ctx => PulseApi.get("/v1/stats/dau?" + ctx.query()),
    render: (body, rows) => body.append(chart("dau-chart", PulseCharts.line,
                                              rows.map(r => ({label: r.date, value: r.unique_users})))),
    isEmpty: rows => rows.length === 0,
  });

  PulsePanels.define({
    id: "top-events", title: "Top events",
    load: ctx => PulseApi.get("/v1/stats/top-events?" + ctx.query({limit: "10"})),
    render(body, rows) {
      body.append(chart("top-events-chart", PulseCharts.bars, rows.map(r => ({label: r.event_type, value: r.count}))),
                  table(["event_type", "count", "users"], rows, "top-events"));
    },
    isEmpty: rows => rows.length === 0,
  });

  PulsePanels.define({
    id: "pages", title: "Top pages",
    load: ctx => PulseApi.get("/v1/stats/pages?" + ctx.query({limit: "10"})),
    render(body, pages) {
      const total = el("p", {id: "pages-total"}, `${pages.total_views} views by ${pages.unique_users} users`);
      total.dataset.views = pages.total_views;
      total.dataset.users = pages.unique_users;
      body.append(total, table(["path", "views", "users"], pages.top_paths, "pages"));
    },
    isEmpty: pages => pages.total_views === 0,
  });

  PulsePanels.define({
    id: "retention", title: "Weekly retention", wide: true,
    load: ctx => PulseApi.get("/v1/stats/retention?" + ctx.query({windows: ctx.state.windows || "8"})),
    render(body, rows) {
      const cohorts = rows.filter(r => r.week_0 > 0);  // a week in which nobody started is no cohort
      const weeks = Math.max(0, ...cohorts.map(r => Object.keys(r).length - 2));
      const t = table(["cohort_week", "week_0", ...Array.from({length: weeks}, (_, i) => `week_${i + 1}`)],
                      cohorts, "retention");
      t.classList.add("heat");
      for (const td of t.querySelectorAll("td")) {
        if (/^week_[1-9]/.test(td.dataset.field) && td.textContent) {
          td.style.setProperty("--pct", td.textContent);
          td.classList.add("pct");
        }
      }
      body.append(t);
    },
    isEmpty: rows => !rows.some(r => r.week_0 > 0),
  });

  // The funnel offers the event types of the range; its default steps are the
  // three most frequent, in that order.
  PulsePanels.define({
    id: "funnel", title: "Funnel", wide: true,
    controls(box, ctx) {
      const form = el("form", {id: "funnel-form"});
      form.append(el("span", {id: "funnel-steps"}),
                  Object.assign(el("button", {type: "button", id: "funnel-add", className: "quiet"}, "+ step")),
                  el("label", {}, "Window (s) "),
                  el("button", {type: "submit"}, "Run funnel"));
      form.querySelector("label").appendChild(el("input", {id: "funnel-window", type: "number", min: "1",
                                                           value: ctx.state.window || "86400"}));
      form.addEventListener("submit", e => {
        e.preventDefault();
        const steps = [...form.querySelectorAll("#funnel-steps select")].map(s => s.value).filter(Boolean);
        ctx.setState({funnel: steps.join(","), window: form.querySelector("#funnel-window").value});
        PulsePanels.load("funnel", ctx);
      });
      form.querySelector("#funnel-add").addEventListener("click", () => {
        const holder = form.querySelector("#funnel-steps");
        holder.appendChild(stepSelect(holder.dataset.types ? JSON.parse(holder.dataset.types) : [], ""));
      });
      box.appendChild(form);
    },
    async load(ctx) {
      const types = (await PulseApi.get("/v1/stats/top-events?" + ctx.query({limit: "100"}))).map(r => r.event_type);
      const wanted = (ctx.state.funnel || "").split(",").map(s => s.trim()).filter(Boolean);
      const steps = wanted.length ? wanted : types.slice(0, 3);
      if (steps.length < 2) return {types, steps, answer: null};  // a funnel needs two steps
      const body = {steps, window_seconds: Number(ctx.state.window || 86400), from: ctx.state.from,
                    to: ctx.state.to, tz: ctx.state.tz || "UTC", segment: ctx.segments()};
      const project = ctx.state.project ? "?project_id=" + encodeURIComponent(ctx.state.project) : "";
      return {types, steps, answer: await PulseApi.post("/v1/stats/funnel" + project, body)};
    },
    render(body, {types, steps, answer}) {
      const holder = document.getElementById("funnel-steps");
      holder.dataset.types = JSON.stringify(types);
      holder.replaceChildren(...steps.map(step => stepSelect(types, step)));
      if (!answer) {
        body.append(el("p", {className: "hint"}, "A funnel needs two steps: choose event types above."));
        return;
      }
      body.append(chart("funnel-chart", PulseCharts.bars, answer.steps.map(s => ({label: s.event_type, value: s.users}))),
                  table(["event_type", "users", "conversion_from_start", "conversion_from_previous"], answer.steps,
                        "funnel"));
    },
    isEmpty: ({types, answer}) => types.length === 0 || !answer,
  });

  function stepSelect(types, chosen) {
    const select = el("select", {className: "funnel-step"});
    select.appendChild(new Option("(none)", ""));
    for (const type of new Set([...types, ...(chosen ? [chosen] : [])])) select.appendChild(new Option(type, type));
    select.value = chosen;
    return select;
  }

  return {stopLive: () => liveAbort && liveAbort.abort()};
})();
