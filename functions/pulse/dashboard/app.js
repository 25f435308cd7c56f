// The Pulse dashboard: reads the stats API with a bearer token (plus a chosen
// project) or a read API key, and draws the main charts. Settings may also
// come from the URL fragment (#key=...&from=...), which never reaches a server.
"use strict";

(() => {
  const $ = id => document.getElementById(id);
  const params = new URLSearchParams(location.hash.slice(1));
  const stored = JSON.parse(sessionStorage.getItem("pulse-dashboard") || "{}");
  const setting = name => params.get(name) ?? stored[name] ?? "";
  const PERCENT = /^(week_[1-9][0-9]*|conversion_from_start|conversion_from_previous)$/;
  let liveAbort = null;

  function today() { return new Date().toISOString().slice(0, 10); }
  function daysAgo(n) { return new Date(Date.now() - n * 86400000).toISOString().slice(0, 10); }

  $("token").value = setting("token");
  $("key").value = setting("key");
  $("from").value = setting("from") || daysAgo(29);
  $("to").value = setting("to") || today();
  $("tz").value = setting("tz") || "UTC";
  $("segment").value = setting("segment");
  if (setting("funnel")) $("funnel-steps").value = setting("funnel");
  if (setting("window")) $("funnel-window").value = setting("window");

  function headers() {
    const h = {"Accept": "application/json"};
    if ($("token").value) h["Authorization"] = "Bearer " + $("token").value;
    else if ($("key").value) h["X-API-Key"] = $("key").value;
    return h;
  }

  function query(extra = {}) {
    const q = new URLSearchParams();
    if ($("project").value) q.set("project_id", $("project").value);
    q.set("from", $("from").value);
    q.set("to", $("to").value);
    q.set("tz", $("tz").value || "UTC");
    for (const s of $("segment").value.split(",").map(x => x.trim()).filter(Boolean)) q.append("segment", s);
    for (const [k, v] of Object.entries(extra)) q.set(k, v);
    return q.toString();
  }

  async function api(path, extra, init = {}) {
    const sep = path.includes("?") ? "&" : "?";
    const response = await fetch(path + (extra === null ? "" : sep + query(extra)),
                                 {...init, headers: {...headers(), ...(init.headers || {})}});
    const body = await response.json().catch(() => ({}));
    if (!response.ok) throw new Error(`${path}: ${body.detail || response.status}`);
    return body;
  }

  function table(id, columns, rows) {
    const t = $(id);
    t.replaceChildren();
    const head = t.createTHead().insertRow();
    for (const c of columns) head.appendChild(Object.assign(document.createElement("th"), {textContent: c}));
    const body = t.createTBody();
    for (const r of rows) {
      const tr = body.insertRow();
      columns.forEach(c => {
        const td = tr.insertCell();
        const v = r[c];
        td.textContent = v === undefined || v === null ? "" : (PERCENT.test(c) ? Number(v).toFixed(1) : String(v));
        td.dataset.field = c;
      });
    }
  }

  function numbers(id, data) {
    for (const dd of $(id).querySelectorAll("dd")) {
      const v = data[dd.dataset.field];
      dd.textContent = v === undefined ? "–" : String(v);
    }
  }

  async function loadProjects() {
    if (!$("token").value) return;
    const answer = await api("/v1/projects", null);
    const list = Array.isArray(answer) ? answer : (answer.projects || []);
    const select = $("project");
    const wanted = setting("project");
    select.replaceChildren(...list.map(p => new Option(p.name || p.project_id, p.project_id)));
    if (wanted) select.value = wanted;
  }

  async function runFunnel() {
    const steps = $("funnel-steps").value.split(",").map(s => s.trim()).filter(Boolean);
    const body = {steps, window_seconds: Number($("funnel-window").value), from: $("from").value,
                  to: $("to").value, tz: $("tz").value || "UTC",
                  segment: $("segment").value.split(",").map(x => x.trim()).filter(Boolean)};
    const path = "/v1/stats/funnel" + ($("project").value ? "?project_id=" + encodeURIComponent($("project").value) : "");
    const answer = await api(path, null, {method: "POST", body: JSON.stringify(body),
                                          headers: {"Content-Type": "application/json"}});
    PulseCharts.bars($("funnel-chart"), answer.steps.map(s => ({label: s.event_type, value: s.users})));
    table("funnel", ["event_type", "users", "conversion_from_start", "conversion_from_previous"], answer.steps);
  }

  async function live() {
    if (liveAbort) liveAbort.abort();
    if (setting("live") === "off") return;
    liveAbort = new AbortController();
    try {
      const response = await fetch("/v1/stats/live?" + query(), {headers: headers(), signal: liveAbort.signal});
      const reader = response.body.getReader();
      const decoder = new TextDecoder();
      let buffer = "";
      for (;;) {
        const {value, done} = await reader.read();
        if (done) break;
        buffer += decoder.decode(value, {stream: true});
        let cut;
        while ((cut = buffer.indexOf("\n\n")) >= 0) {
          const block = buffer.slice(0, cut);
          buffer = buffer.slice(cut + 2);
          const data = block.split("\n").find(l => l.startsWith("data: "));
          if (data) numbers("summary", JSON.parse(data.slice(6)));
        }
      }
    } catch (e) {
      if (e.name !== "AbortError") $("status").textContent = "live view stopped: " + e.message;
    }
  }

  async function load() {
    document.body.dataset.state = "loading";
    $("status").textContent = "Loading…";
    sessionStorage.setItem("pulse-dashboard", JSON.stringify({
      token: $("token").value, key: $("key").value, project: $("project").value}));
    try {
      await loadProjects();
      const [events, dau, top, pages, retention, overview, summary] = await Promise.all([
        api("/v1/stats/events", {group_by: "day"}),
        api("/v1/stats/dau", {}),
        api("/v1/stats/top-events", {limit: "10"}),
        api("/v1/stats/pages", {limit: "10"}),
        api("/v1/stats/retention", {windows: setting("windows") || "8"}),
        api("/v1/stats/overview", {}),
        api("/v1/stats/summary", {}),
      ]);
      PulseCharts.columns($("events-chart"), events.map(r => ({label: r.bucket, value: r.events})));
      PulseCharts.line($("dau-chart"), dau.map(r => ({label: r.date, value: r.unique_users})));
      PulseCharts.bars($("top-events-chart"), top.map(r => ({label: r.event_type, value: r.count})));
      table("top-events", ["event_type", "count", "users"], top);
      $("pages-total").textContent = `${pages.total_views} views by ${pages.unique_users} users`;
      $("pages-total").dataset.views = pages.total_views;
      $("pages-total").dataset.users = pages.unique_users;
      table("pages", ["path", "views", "users"], pages.top_paths);
      const weeks = Math.max(0, ...retention.map(r => Object.keys(r).length - 2));
      table("retention", ["cohort_week", "week_0", ...Array.from({length: weeks}, (_, i) => `week_${i + 1}`)], retention);
      for (const td of $("retention").querySelectorAll("td")) {
        if (/^week_[1-9]/.test(td.dataset.field) && td.textContent) {
          td.style.setProperty("--pct", td.textContent);
          td.classList.add("pct");
        }
      }
      numbers("overview", overview);
      numbers("summary", summary);
      await runFunnel();
      $("status").textContent = "";
      document.body.dataset.state = "ready";
      live();
    } catch (e) {
      $("status").textContent = e.message;
      document.body.dataset.state = "error";
    }
  }

  $("access").addEventListener("submit", e => { e.preventDefault(); load(); });
  $("funnel-form").addEventListener("submit", e => {
    e.preventDefault();
    runFunnel().catch(err => { $("status").textContent = err.message; });
  });
  $("project").addEventListener("change", load);
  if ($("token").value || $("key").value) load();
  else $("status").textContent = "Sign in (access token) or paste a read API key, then Show.";
})();
