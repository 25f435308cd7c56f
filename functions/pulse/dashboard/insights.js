// Insight panels: events split by a breakdown, paths as a flow, stickiness,
// lifecycle; and the Cohorts view (the cohort filter of the stats view is
// filled from the project's cohorts). Each is a PulsePanels unit; values are kept as data
// attributes so what is drawn can be read back.
"use strict";

const PulseCohorts = (() => {
  const {el, table, chart, labelled, choice, projectQuery} = PulseStats;
  let known = [];

  function folded(summary, content) {  // a long table, closed until asked for
    const box = el("details");
    box.append(el("summary", {}, summary), content);
    return box;
  }

  // The cohort filter (in the filters form): "everyone", then each cohort.
  function fill(ctx) {
    const select = document.getElementById("cohort");
    if (!select) return;
    select.replaceChildren(new Option("everyone", ""), ...known.map(c => new Option(c.name, c.cohort_id)));
    select.value = known.some(c => c.cohort_id === ctx.state.cohort) ? ctx.state.cohort : "";
  }

  async function refresh(ctx) {
    const q = new URLSearchParams(ctx.query());
    const project = q.get("project_id");
    known = await PulseApi.get("/v1/cohorts" + (project ? "?project_id=" + encodeURIComponent(project) : ""));
    fill(ctx);
    return known;
  }

  PulsePanels.define({
    id: "breakdown", title: "Events by breakdown", wide: true,
    controls(box, ctx) {
      const form = el("form", {id: "breakdown-form"});
      const field = el("input", {id: "breakdown-field", size: 18, value: ctx.state.breakdown || "country",
                                 placeholder: "country, properties.plan"});
      const second = el("input", {id: "breakdown-second", size: 14, value: ctx.state.breakdown2 || "",
                                  placeholder: "(optional)"});
      const limit = el("input", {id: "breakdown-limit", type: "number", min: "1", max: "100", size: 3,
                                 value: ctx.state.blimit || "5"});
      form.append(labelled("Split by", field), labelled("and", second), labelled("Top", limit),
                  labelled("Per", choice("breakdown-interval", [["day", "day"], ["week", "week"], ["month", "month"]],
                                         ctx.state.binterval || "day")),
                  el("button", {type: "submit"}, "Split"));
      form.addEventListener("submit", e => {
        e.preventDefault();
        ctx.setState({breakdown: field.value.trim(), breakdown2: second.value.trim(), blimit: limit.value,
                      binterval: form.querySelector("#breakdown-interval").value});
        PulsePanels.load("breakdown", ctx);
      });
      box.appendChild(form);
    },
    load(ctx) {
      const q = new URLSearchParams(ctx.query({group_by: ctx.state.binterval || "day",
                                               breakdown_limit: ctx.state.blimit || "5"}));
      q.append("breakdown", ctx.state.breakdown || "country");
      if (ctx.state.breakdown2) q.append("breakdown", ctx.state.breakdown2);
      return PulseApi.get("/v1/stats/events?" + q);
    },
    render(body, rows) {
      const labels = [...new Set(rows.map(r => r.bucket))];
      const names = [...new Set(rows.map(r => r.breakdown.join(" / ")))];
      const series = names.map(name => ({name, values: labels.map(b => {
        const row = rows.find(r => r.bucket === b && r.breakdown.join(" / ") === name);
        return row ? row.events : 0;
      })}));
      const box = el("div", {id: "breakdown-chart", className: "chart"});
      PulseCharts.lines(box, labels, series);
      body.append(box, folded(`Table: ${rows.length} rows`, table(["bucket", "breakdown", "events", "users"],
                                   rows.map(r => ({...r, breakdown: r.breakdown.join(" / ")})), "breakdown")));
    },
    isEmpty: rows => rows.length === 0,
  });

  PulsePanels.define({
    id: "paths", title: "Paths", wide: true,
    controls(box, ctx) {
      const form = el("form", {id: "paths-form"});
      const anchor = el("input", {id: "paths-anchor", size: 16, value: ctx.state.pstart || "",
                                  placeholder: "the most frequent event"});
      form.append(labelled("From", choice("paths-direction", [["start", "after"], ["end", "before"]],
                                          ctx.state.pdir || "start")),
                  labelled("event (or /page)", anchor),
                  labelled("Steps", el("input", {id: "paths-steps", type: "number", min: "1", max: "5",
                                                 value: ctx.state.psteps || "3"})),
                  labelled("Min users", el("input", {id: "paths-min", type: "number", min: "1",
                                                     value: ctx.state.pmin || "1"})),
                  el("label", {className: "check"}, ""),
                  el("button", {type: "submit"}, "Show paths"));
      const pages = el("input", {id: "paths-pages", type: "checkbox", checked: ctx.state.ppages === "true"});
      form.querySelector("label.check").append(pages, " pages by path");
      form.addEventListener("submit", e => {
        e.preventDefault();
        ctx.setState({pstart: anchor.value.trim(), pdir: form.querySelector("#paths-direction").value,
                      psteps: form.querySelector("#paths-steps").value, pmin: form.querySelector("#paths-min").value,
                      ppages: pages.checked ? "true" : ""});
        PulsePanels.load("paths", ctx);
      });
      box.appendChild(form);
    },
    async load(ctx) {
      let anchor = ctx.state.pstart;
      if (!anchor) {
        const top = await PulseApi.get("/v1/stats/top-events?" + ctx.query({limit: "1"}));
        if (!top.length) return {nodes: [], edges: []};
        anchor = top[0].event_type;
      }
      return PulseApi.get("/v1/stats/paths?" + ctx.query({[ctx.state.pdir || "start"]: anchor,
                                                          steps: ctx.state.psteps || "3",
                                                          min_users: ctx.state.pmin || "1",
                                                          pages: ctx.state.ppages === "true" ? "true" : "false"}));
    },
    render(body, answer) {
      const box = el("div", {id: "paths-chart", className: "chart"});
      PulseCharts.sankey(box, answer);
      body.append(box);
    },
    isEmpty: answer => answer.nodes.length === 0,
  });

  PulsePanels.define({
    id: "stickiness", title: "Stickiness",
    controls(box, ctx) {
      const form = el("form", {id: "stickiness-form"});
      form.append(labelled("Event", el("input", {id: "stickiness-event", size: 14, value: ctx.state.sevent || "",
                                                 placeholder: "any event"})),
                  labelled("Counted in", choice("stickiness-interval", [["day", "days"], ["week", "weeks"],
                                                                        ["month", "months"]], ctx.state.sinterval || "day")),
                  el("button", {type: "submit"}, "Show"));
      form.addEventListener("submit", e => {
        e.preventDefault();
        ctx.setState({sevent: form.querySelector("#stickiness-event").value.trim(),
                      sinterval: form.querySelector("#stickiness-interval").value});
        PulsePanels.load("stickiness", ctx);
      });
      box.appendChild(form);
    },
    load: ctx => PulseApi.get("/v1/stats/stickiness?" + ctx.query({interval: ctx.state.sinterval || "day",
                                                                   ...(ctx.state.sevent ? {event_type: ctx.state.sevent} : {})})),
    render(body, rows, ctx) {
      const unit = ctx.state.sinterval || "day";
      body.append(chart("stickiness-chart", PulseCharts.bars, rows.map(r => ({label: `${r.intervals} ${unit}${r.intervals === 1 ? "" : "s"}`,
                                                                             value: r.users}))),
                  folded("Table", table(["intervals", "users"], rows, "stickiness")));
    },
    isEmpty: rows => rows.length === 0,
  });

  const KINDS = ["new", "returning", "resurrecting", "dormant"];

  PulsePanels.define({
    id: "lifecycle", title: "Lifecycle", wide: true,
    controls(box, ctx) {
      const form = el("form", {id: "lifecycle-form"});
      form.append(labelled("Per", choice("lifecycle-interval", [["day", "day"], ["week", "week"], ["month", "month"]],
                                         ctx.state.linterval || "week")),
                  labelled("Event", el("input", {id: "lifecycle-event", size: 14, value: ctx.state.levent || "",
                                                 placeholder: "any event"})),
                  el("button", {type: "submit"}, "Show"));
      form.addEventListener("submit", e => {
        e.preventDefault();
        ctx.setState({linterval: form.querySelector("#lifecycle-interval").value,
                      levent: form.querySelector("#lifecycle-event").value.trim()});
        PulsePanels.load("lifecycle", ctx);
      });
      box.appendChild(form);
    },
    load: ctx => PulseApi.get("/v1/stats/lifecycle?" + ctx.query({interval: ctx.state.linterval || "week",
                                                                  ...(ctx.state.levent ? {event_type: ctx.state.levent} : {})})),
    render(body, rows) {
      const box = el("div", {id: "lifecycle-chart", className: "chart"});
      PulseCharts.diverging(box, rows, KINDS.slice(0, 3), KINDS.slice(3));
      body.append(box, el("p", {className: "hint"},
                          "new: first event ever; returning: active in the period before too; resurrecting: back"
                          + " after a gap; dormant: active the period before, not in this one."),
                  folded("Table", table(["bucket", ...KINDS], rows, "lifecycle")));
    },
    isEmpty: rows => !rows.some(r => KINDS.some(k => r[k] > 0)),
  });

  // The Cohorts view (#view=cohorts): the project's cohorts, a form to make one
  // (a list of users, or who did an event), and a way to filter the stats by one.
  function form(ctx) {
    const box = document.getElementById("cohort-form");
    if (box.dataset.ready) return;
    box.dataset.ready = "yes";
    const kind = choice("cohort-kind", [["users", "a list of users"], ["definition", "who did an event"]], "users");
    const users = el("textarea", {id: "cohort-users", rows: 2, cols: 30, placeholder: "user ids, one per line"});
    const event = el("input", {id: "cohort-event", size: 12, placeholder: "purchase"});
    const count = el("input", {id: "cohort-count", type: "number", min: "1", defaultValue: "1", size: 3});
    const days = el("input", {id: "cohort-days", type: "number", min: "1", max: "731", defaultValue: "30", size: 3});
    const negate = el("input", {id: "cohort-negate", type: "checkbox"});
    const not = el("label", {className: "check"});
    not.append(negate, " did not");
    const name = el("input", {id: "cohort-name", size: 16, required: true, maxLength: 200});
    const upload = el("input", {id: "cohort-file", type: "file", accept: ".csv,.txt,text/plain,text/csv"});
    upload.addEventListener("change", async () => {  // a file of user ids: one per line (a CSV's first column)
      const file = upload.files[0];
      if (!file) return;
      const lines = (await file.text()).split(/\r?\n/).map(l => l.split(",")[0].trim().replace(/^"|"$/g, ""));
      if (["user_id", "userId", "id", "distinct_id", "anonymous_id"].includes(lines[0])) lines.shift();  // a header
      users.value = lines.filter(Boolean).join("\n");
    });
    box.append(labelled("Name", name), labelled("Made of", kind), labelled("Users", users),
               labelled("or from a file", upload), not,
               labelled("Event", event), labelled("at least", count), labelled("times in the last days", days),
               el("button", {type: "submit"}, "Save cohort"));
    box.addEventListener("submit", async e => {
      e.preventDefault();
      const body = kind.value === "users"
        ? {name: name.value.trim(), users: users.value.split(/[\n,]/).map(s => s.trim()).filter(Boolean)}
        : {name: name.value.trim(), definition: {event_type: event.value.trim(), min_count: Number(count.value),
                                                 days: Number(days.value), negate: negate.checked}};
      const status = document.getElementById("cohorts-status");
      try {
        await PulseApi.post("/v1/cohorts" + projectQuery(ctx), body);
        box.reset();
        await show(ctx);
        status.textContent = `Saved ${body.name}.`;
      } catch (error) {
        status.textContent = error.message;
      }
    });
  }

  function describe(c) {
    if (c.kind === "behavioural") {
      const d = c.definition;
      return `${d.negate ? "did not do" : "did"} ${d.event_type} at least ${d.min_count} time(s) in the last ${d.days}`
        + ` days${d.segment && d.segment.length ? ` (${d.segment.join(", ")})` : ""}`;
    }
    return c.definition && c.definition.funnel ? `persons at a funnel step: ${c.members}` : `${c.members} users listed`;
  }

  async function show(ctx) {
    form(ctx);
    const view = document.getElementById("cohorts-view");
    const status = document.getElementById("cohorts-status");
    view.dataset.state = "loading";
    status.textContent = "Loading…";
    try {
      const cohorts = await refresh(ctx);
      const rows = cohorts.map(c => ({...c, what: describe(c), created_at: c.created_at.slice(0, 16).replace("T", " ")}));
      const t = table(["name", "kind", "what", "created_at", ""], rows, "cohorts");
      t.querySelectorAll("tbody tr").forEach((tr, i) => {
        tr.dataset.cohortId = cohorts[i].cohort_id;
        const use = el("button", {type: "button", className: "link"}, "filter the stats by it");
        use.addEventListener("click", () => {  // a new address: the stats view, filtered
          const q = new URLSearchParams(location.hash.slice(1));
          q.set("cohort", cohorts[i].cohort_id);
          q.set("view", "stats");
          location.hash = q.toString();
        });
        tr.lastElementChild.append(use);
      });
      document.getElementById("cohorts").replaceWith(t);
      view.dataset.state = cohorts.length ? "ready" : "empty";
      status.textContent = cohorts.length ? "" : "No cohorts yet: make one above, or save a funnel step's persons.";
    } catch (error) {
      view.dataset.state = "error";
      status.textContent = `Could not load: ${error.message}`;
    }
  }

  return {refresh, fill, show};
})();
