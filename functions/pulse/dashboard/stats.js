// The stats panels of the dashboard, one PulsePanels.define each. Numbers and
// charts carry their values as data attributes, so what is drawn can be read
// back (the dashboard tests do).
"use strict";

const PulseStats = (() => {
  const PERCENT = /^(week_[1-9][0-9]*|conversion_from_start|conversion_from_previous)$/;
  const SECONDS_FIELD = /_seconds_to_convert$/;
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
        td.textContent = v === undefined || v === null ? "" : (PERCENT.test(c) ? Number(v).toFixed(1)
          : SECONDS_FIELD.test(c) ? duration(v) : String(v));
        if (SECONDS_FIELD.test(c) && v !== null && v !== undefined) td.dataset.seconds = v;
        td.dataset.field = c;
      }
    }
    return t;
  }

  // Seconds as the largest units that read well: "45.5 s", "12 min 3 s", "2 h 5 min", "3 d 4 h".
  function duration(seconds) {
    const s = Number(seconds);
    if (s < 60) return `${Math.round(s * 10) / 10} s`;
    const units = [["d", 86400], ["h", 3600], ["min", 60], ["s", 1]];
    const parts = [];
    let rest = Math.round(s);
    for (const [name, size] of units) {
      if (rest >= size && parts.length < 2) { parts.push(`${Math.floor(rest / size)} ${name}`); rest %= size; }
      else if (parts.length) break;
    }
    return parts.join(" ");
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
  // three most frequent, in that order. Its order, window, an exclusion and a
  // breakdown are in the URL too; each step's converted and dropped persons
  // open below, each with a link to their history.
  const ORDERS = [["ordered", "in order"], ["strict", "strictly in order"], ["any", "in any order"]];
  const UNITS = [["minute", "minutes"], ["hour", "hours"], ["day", "days"]];
  const FUNNEL_COLUMNS = ["event_type", "users", "conversion_from_start", "conversion_from_previous",
                          "median_seconds_to_convert", "mean_seconds_to_convert"];

  function choice(id, options, chosen) {
    const select = el("select", {id});
    for (const [value, label] of options) select.appendChild(new Option(label, value));
    select.value = chosen;
    return select;
  }

  function labelled(text, control) {
    const label = el("label", {}, text + " ");
    label.appendChild(control);
    return label;
  }

  function funnelBody(ctx, steps) {
    const unit = ctx.state.unit || "day";
    const body = {steps, order: ctx.state.order || "ordered", from: ctx.state.from, to: ctx.state.to,
                  tz: ctx.state.tz || "UTC", segment: ctx.segments(),
                  window: {value: Number(ctx.state.window || 1), unit}};
    const exclude = (ctx.state.exclude || "").split("|");
    if (exclude[0]) body.exclusions = [{event_type: exclude[0], from_step: Number(exclude[1] || 1),
                                        to_step: Number(exclude[2] || steps.length)}];
    if (ctx.state.fbreakdown) body.breakdown = ctx.state.fbreakdown;
    if (ctx.state.cohort) body.cohort = ctx.state.cohort;
    return body;
  }

  PulsePanels.define({
    id: "funnel", title: "Funnel", wide: true,
    controls(box, ctx) {
      const form = el("form", {id: "funnel-form"});
      const windowInput = el("input", {id: "funnel-window", type: "number", min: "1", value: ctx.state.window || "1"});
      const exclude = (ctx.state.exclude || "").split("|");
      form.append(el("span", {id: "funnel-steps"}),
                  Object.assign(el("button", {type: "button", id: "funnel-add", className: "quiet"}, "+ step")),
                  labelled("Order", choice("funnel-order", ORDERS, ctx.state.order || "ordered")),
                  labelled("Window", windowInput),
                  labelled("Unit", choice("funnel-unit", UNITS, ctx.state.unit || "day")),
                  labelled("Exclude", el("select", {id: "funnel-exclude", className: "funnel-types"})),
                  labelled("between steps", el("input", {id: "funnel-exclude-from", type: "number", min: "1",
                                                         value: exclude[1] || "1", size: 2})),
                  labelled("and", el("input", {id: "funnel-exclude-to", type: "number", min: "2",
                                               value: exclude[2] || "2", size: 2})),
                  labelled("Breakdown", el("input", {id: "funnel-breakdown", size: 14, placeholder: "country",
                                                     value: ctx.state.fbreakdown || ""})),
                  el("button", {type: "submit"}, "Run funnel"));
      form.addEventListener("submit", e => {
        e.preventDefault();
        const steps = [...form.querySelectorAll("#funnel-steps select")].map(s => s.value).filter(Boolean);
        const excluded = form.querySelector("#funnel-exclude").value;
        ctx.setState({funnel: steps.join(","), window: windowInput.value, unit: form.querySelector("#funnel-unit").value,
                      order: form.querySelector("#funnel-order").value,
                      exclude: excluded ? [excluded, form.querySelector("#funnel-exclude-from").value,
                                           form.querySelector("#funnel-exclude-to").value].join("|") : "",
                      fbreakdown: form.querySelector("#funnel-breakdown").value.trim()});
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
      const body = funnelBody(ctx, steps);
      return {types, steps, body, answer: await PulseApi.post("/v1/stats/funnel" + projectQuery(ctx), body)};
    },
    render(body, {types, steps, body: request, answer}, ctx) {
      const holder = document.getElementById("funnel-steps");
      holder.dataset.types = JSON.stringify(types);
      holder.replaceChildren(...steps.map(step => stepSelect(types, step)));
      const exclude = document.getElementById("funnel-exclude");
      exclude.replaceChildren(new Option("(none)", ""), ...types.map(t => new Option(t, t)));
      exclude.value = (ctx.state.exclude || "").split("|")[0];
      if (!answer) {
        body.append(el("p", {className: "hint"}, "A funnel needs two steps: choose event types above."));
        return;
      }
      const grouped = request.breakdown !== undefined;
      const first = grouped ? answer.steps.filter(s => s.breakdown.join() === answer.steps[0].breakdown.join())
                            : answer.steps;
      body.append(chart("funnel-chart", PulseCharts.bars, first.map(s => ({label: s.event_type, value: s.users}))));
      const rows = answer.steps.map((s, i) => ({...s, step: i % steps.length + 1,
                                                breakdown: grouped ? s.breakdown.join(" / ") : undefined}));
      const columns = grouped ? ["breakdown", ...FUNNEL_COLUMNS] : FUNNEL_COLUMNS;
      const t = table([...columns, "persons"], rows, "funnel");
      const people = el("div", {id: "funnel-people"});
      t.querySelectorAll("tbody tr").forEach((tr, i) => {
        const row = rows[i];
        const cell = tr.querySelector('[data-field="persons"]');
        const value = grouped ? answer.steps[i].breakdown : undefined;
        cell.append(personsButton("converted", row.step, value, request, people, ctx));
        if (row.step > 1) cell.append(personsButton("dropped", row.step, value, request, people, ctx));
      });
      body.append(t);
      const last = first[first.length - 1];
      if (last && last.seconds_to_convert_histogram) {
        body.append(el("p", {className: "hint"}, `Time to convert to ${last.event_type} (persons by seconds):`),
                    chart("funnel-histogram", PulseCharts.bars, last.seconds_to_convert_histogram.map(b => ({
                      label: b.to_seconds === null ? `≥ ${b.from_seconds} s` : `${b.from_seconds}–${b.to_seconds} s`,
                      value: b.users}))));
      }
      body.append(people);
    },
    isEmpty: ({types, answer}) => types.length === 0 || !answer,
  });

  function projectQuery(ctx) {
    return ctx.state.project && PulseApi.session && !PulseApi.session.api_key
      ? "?project_id=" + encodeURIComponent(ctx.state.project) : "";
  }

  function personsButton(status, step, value, request, target, ctx) {
    const button = el("button", {type: "button", className: "link", title: `persons ${status} at step ${step}`},
                      status);
    button.dataset.status = status;
    button.dataset.step = step;
    button.addEventListener("click", () => showPeople(target, {...request, step, status, limit: 100,
                                                                ...(value ? {breakdown_value: value} : {})}, ctx));
    return button;
  }

  async function showPeople(target, request, ctx) {
    target.replaceChildren(el("p", {className: "hint"}, "Loading…"));
    try {
      const found = await PulseApi.post("/v1/stats/funnel/people" + projectQuery(ctx), request);
      const title = el("p", {id: "people-title"},
                       `${found.length} persons ${request.status} at step ${request.step}` +
                       (found.length === 100 ? " (the first 100)" : ""));
      const list = el("ol", {id: "people", className: "people"});
      for (const person of found) {
        const item = el("li");
        item.dataset.personId = person.person_id;
        const link = el("a", {href: "#", title: "history"}, person.distinct_ids.join(", "));
        link.addEventListener("click", e => { e.preventDefault(); showHistory(item, person.distinct_ids[0], ctx); });
        item.append(link);
        list.append(item);
      }
      const save = el("button", {type: "button", id: "people-save", className: "quiet"}, "Save as a cohort");
      save.addEventListener("click", async () => {
        const name = `${request.steps.map(s => s.event_type || s).join(" → ")}: ${request.status} at step ${request.step}`;
        const {limit, ...funnel} = request;
        const made = await PulseApi.post("/v1/cohorts" + projectQuery(ctx), {name: name.slice(0, 200), funnel});
        save.textContent = `Saved: ${made.name} (${made.members} persons)`;
        save.disabled = true;
        PulseCohorts.refresh(ctx);
      });
      target.replaceChildren(title, save, list);
    } catch (error) {
      target.replaceChildren(el("p", {className: "error"}, `Could not load: ${error.message}`));
    }
  }

  async function showHistory(item, id, ctx) {
    const old = item.querySelector(".history");
    if (old) { old.remove(); return; }
    const box = el("div", {className: "history"}, "Loading…");
    item.append(box);
    try {
      const q = new URLSearchParams(ctx.query());
      for (const name of ["from", "to", "segment", "cohort"]) q.delete(name);  // the whole history
      const user = await PulseApi.get(`/v1/stats/users/${encodeURIComponent(id)}?${q}`);
      box.replaceChildren(el("span", {}, `${user.events} events, ${user.first_seen} – ${user.last_seen}`),
                          table(["event_type", "count"], user.top_events));
      box.dataset.events = user.events;
    } catch (error) {
      box.textContent = `Could not load: ${error.message}`;
    }
  }

  function stepSelect(types, chosen) {
    const select = el("select", {className: "funnel-step"});
    select.appendChild(new Option("(none)", ""));
    for (const type of new Set([...types, ...(chosen ? [chosen] : [])])) select.appendChild(new Option(type, type));
    select.value = chosen;
    return select;
  }

  return {stopLive: () => liveAbort && liveAbort.abort(), el, table, chart, labelled, choice, projectQuery};
})();
