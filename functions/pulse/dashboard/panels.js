// Dashboard panels. A panel is a small unit:
//   PulsePanels.define({id, title, wide?, controls?(form, ctx), load(ctx), render(body, data, ctx), isEmpty?(data)})
// `load` fetches (ctx.query(extra) gives the project, range and segment
// parameters), `render` draws into the panel's body; the frame shows each
// panel's own loading, empty and error state (data-state on the panel), so one
// failing query leaves the others standing. Panels appear in definition order.
"use strict";

const PulsePanels = (() => {
  const defined = [];
  const mounted = new Map();

  function define(panel) { defined.push(panel); }

  function mount(container, ctx) {
    container.replaceChildren();
    mounted.clear();
    const template = document.getElementById("panel-template");
    for (const panel of defined) {
      const el = template.content.firstElementChild.cloneNode(true);
      el.id = `panel-${panel.id}`;
      if (panel.wide) el.classList.add("wide");
      el.querySelector(".panel-title").textContent = panel.title;
      container.appendChild(el);
      mounted.set(panel.id, {panel, el, run: 0});
      if (panel.controls) panel.controls(el.querySelector(".panel-controls"), ctx);
    }
  }

  async function load(id, ctx) {
    const entry = mounted.get(id);
    if (!entry) return;
    const {panel, el} = entry;
    const run = ++entry.run;
    const status = el.querySelector(".panel-status");
    el.dataset.state = "loading";
    status.textContent = "Loading…";
    try {
      const data = await panel.load(ctx);
      if (run !== entry.run) return;  // a newer load took over
      const body = el.querySelector(".panel-body");
      body.replaceChildren();
      panel.render(body, data, ctx);
      const empty = panel.isEmpty ? panel.isEmpty(data) : false;
      el.dataset.state = empty ? "empty" : "ready";
      status.textContent = empty ? "Nothing in this range yet." : "";
    } catch (error) {
      if (run !== entry.run) return;
      el.dataset.state = "error";
      status.textContent = `Could not load: ${error.message}`;
    }
  }

  function loadAll(ctx) {
    return Promise.all([...mounted.keys()].map(id => load(id, ctx)));
  }

  return {define, mount, load, loadAll};
})();
