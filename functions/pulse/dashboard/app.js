// The Pulse dashboard: sign in (or open with a read API key), choose a
// project, manage its API keys and members, read its stats. The view, the
// project, the range, the segment and the funnel live in the URL fragment
// (#view=stats&project=…&from=…), so a view can be shared: whoever opens the
// link signs in and sees the same view. Credentials never go in the URL.
"use strict";

(() => {
  const $ = id => document.getElementById(id);
  const VIEWS = ["stats", "cohorts", "keys", "members"];
  let projects = [];
  let state = {};

  function today() { return new Date().toISOString().slice(0, 10); }
  function daysAgo(n) { return new Date(Date.now() - n * 86400000).toISOString().slice(0, 10); }

  function readState() {
    const params = new URLSearchParams(location.hash.slice(1));
    const key = params.get("key");
    if (key) {  // an older link carrying a key: keep the key in the session, not in the address
      PulseApi.useKey(key);
      params.delete("key");
    }
    state = Object.fromEntries(params.entries());
    state.view = VIEWS.includes(state.view) ? state.view : "stats";
    state.from = state.from || daysAgo(29);
    state.to = state.to || today();
    writeState({});
  }

  function writeState(patch) {
    state = {...state, ...patch};
    const params = new URLSearchParams();
    for (const [k, v] of Object.entries(state)) if (v !== undefined && v !== null && v !== "") params.set(k, v);
    history.replaceState(null, "", "#" + params.toString());
  }

  const ctx = {
    get state() { return state; },
    setState: writeState,
    segments: () => (state.segment || "").split(",").map(s => s.trim()).filter(Boolean),
    query(extra = {}) {
      const q = new URLSearchParams();
      if (state.project && PulseApi.session && !PulseApi.session.api_key) q.set("project_id", state.project);
      q.set("from", state.from);
      q.set("to", state.to);
      q.set("tz", state.tz || "UTC");
      for (const s of ctx.segments()) q.append("segment", s);
      if (state.cohort) q.set("cohort", state.cohort);
      for (const [k, v] of Object.entries(extra)) q.set(k, v);
      return q.toString();
    },
  };

  function show(view) {
    document.body.dataset.view = view;
    for (const a of document.querySelectorAll("#nav a[data-view]")) a.classList.toggle("current", a.dataset.view === view);
  }

  function setStatus(text) { $("status").textContent = text || ""; }

  // Signing in -------------------------------------------------------------

  let registering = false;
  $("signin-mode").addEventListener("click", () => {
    registering = !registering;
    $("signin-title").textContent = registering ? "Create an account" : "Sign in";
    $("signin-submit").textContent = registering ? "Create account" : "Sign in";
    $("signin-mode").textContent = registering ? "I have an account: sign in" : "Create an account instead";
    $("password").autocomplete = registering ? "new-password" : "current-password";
  });

  $("signin-form").addEventListener("submit", async e => {
    e.preventDefault();
    $("signin-status").textContent = "";
    try {
      if (registering) await PulseApi.register($("email").value, $("password").value);
      else await PulseApi.signIn($("email").value, $("password").value);
      $("password").value = "";
      await start();
    } catch (error) {
      $("signin-status").textContent = error.status === 401 ? "Wrong email or password." : error.message;
    }
  });

  $("key-form").addEventListener("submit", e => {
    e.preventDefault();
    PulseApi.useKey($("key").value.trim());
    $("key").value = "";
    start();
  });

  $("sign-out").addEventListener("click", () => PulseApi.signOut());
  PulseApi.onSignedOut(message => {
    PulseStats.stopLive();
    projects = [];
    $("my-invitations").hidden = true;
    $("signin-status").textContent = message || "";
    show("signin");
  });

  // Projects -----------------------------------------------------------------

  async function loadProjects() {
    projects = await PulseApi.get("/v1/projects");
    const select = $("project");
    select.replaceChildren(...projects.map(p => new Option(p.name || p.project_id, p.project_id)));
    if (!projects.some(p => p.project_id === state.project)) writeState({project: projects.length ? projects[0].project_id : ""});
    select.value = state.project;
    const mine = projects.find(p => p.project_id === state.project);
    document.body.dataset.role = mine ? mine.role : "";
  }

  $("project").addEventListener("change", () => {
    writeState({project: $("project").value});
    const mine = projects.find(p => p.project_id === state.project);
    document.body.dataset.role = mine ? mine.role : "";
    $("key-secret").hidden = true;
    route();
  });

  $("project-form").addEventListener("submit", async e => {
    e.preventDefault();
    try {
      const made = await PulseApi.post("/v1/projects", {name: $("project-name").value});
      writeState({project: made.project_id, view: "keys"});
      await start();
    } catch (error) {
      $("project-status").textContent = error.message;
    }
  });

  // Stats --------------------------------------------------------------------

  $("filters").addEventListener("submit", e => {
    e.preventDefault();
    writeState({from: $("from").value, to: $("to").value, tz: $("tz").value.trim(), segment: $("segment").value.trim(),
                cohort: $("cohort").value});
    PulsePanels.loadAll(ctx);
  });

  function showStats() {
    $("from").value = state.from;
    $("to").value = state.to;
    $("tz").value = state.tz || "";
    $("segment").value = state.segment || "";
    PulseCohorts.fill(ctx);
    PulsePanels.mount($("panels"), ctx);
    return PulsePanels.loadAll(ctx);
  }

  // API keys (owners) ----------------------------------------------------------

  function cells(row, values) {
    for (const value of values) {
      const td = row.insertCell();
      if (value instanceof Node) td.appendChild(value); else td.textContent = value === null || value === undefined ? "" : String(value);
    }
  }

  function confirmButton(label, action) {
    const button = Object.assign(document.createElement("button"), {type: "button", className: "danger", textContent: label});
    button.addEventListener("click", async () => {
      if (button.dataset.armed !== "yes") {  // a second click confirms
        button.dataset.armed = "yes";
        button.textContent = `${label}? Click again`;
        return;
      }
      button.disabled = true;
      await action();
    });
    return button;
  }

  async function showKeys() {
    const status = $("keys-status");
    const view = $("keys-view");
    view.dataset.state = "loading";
    status.textContent = "Loading…";
    try {
      const keys = await PulseApi.get(`/v1/projects/${state.project}/api-keys`);
      const t = $("keys");
      t.replaceChildren();
      const head = t.createTHead().insertRow();
      for (const c of ["name", "prefix", "scopes", "created", "last used", ""]) head.appendChild(Object.assign(document.createElement("th"), {textContent: c}));
      const body = t.createTBody();
      for (const key of keys) {
        const tr = body.insertRow();
        tr.dataset.keyId = key.key_id;
        tr.dataset.revoked = key.revoked_at ? "yes" : "no";
        cells(tr, [key.name, key.prefix, key.scopes.join(" "), key.created_at.slice(0, 16).replace("T", " "),
                   key.last_used_at ? key.last_used_at.slice(0, 16).replace("T", " ") : "never",
                   key.revoked_at ? "revoked" : confirmButton("Revoke", () => revokeKey(key.key_id))]);
      }
      view.dataset.state = keys.length ? "ready" : "empty";
      status.textContent = keys.length ? "" : "No keys yet: make one to send events.";
    } catch (error) {
      view.dataset.state = "error";
      status.textContent = error.status === 403 ? "Only the project's owners manage its keys." : `Could not load: ${error.message}`;
    }
  }

  async function revokeKey(keyId) {
    try {
      await PulseApi.call("DELETE", `/v1/projects/${state.project}/api-keys/${keyId}`);
    } catch (error) {
      $("keys-status").textContent = error.message;
    }
    await showKeys();
  }

  $("key-create").addEventListener("submit", async e => {
    e.preventDefault();
    const scopes = ["ingest", "read"].filter(s => $(`scope-${s}`).checked);
    try {
      const made = await PulseApi.post(`/v1/projects/${state.project}/api-keys`, {name: $("key-name").value, scopes});
      $("key-secret-value").textContent = made.api_key;
      $("key-secret").hidden = false;
      $("key-name").value = "";
      await showKeys();
    } catch (error) {
      $("keys-status").textContent = error.message;
      $("keys-view").dataset.state = "error";
    }
  });

  // Members ------------------------------------------------------------------

  async function showMembers() {
    const status = $("members-status");
    const view = $("members-view");
    view.dataset.state = "loading";
    status.textContent = "Loading…";
    try {
      const members = await PulseApi.get(`/v1/projects/${state.project}/members`);
      const owner = document.body.dataset.role === "owner";
      const t = $("members");
      t.replaceChildren();
      const head = t.createTHead().insertRow();
      for (const c of ["email", "role", "since", ""]) head.appendChild(Object.assign(document.createElement("th"), {textContent: c}));
      const body = t.createTBody();
      for (const m of members) {
        const tr = body.insertRow();
        tr.dataset.email = m.email;
        const self = PulseApi.session && m.email === PulseApi.session.email;
        cells(tr, [m.email, m.role, (m.added_at || "").slice(0, 10),
                   owner && !self ? confirmButton("Remove", () => removeMember(m.user_id)) : ""]);
      }
      if (owner) await showOpenInvitations();
      view.dataset.state = "ready";
      status.textContent = "";
    } catch (error) {
      view.dataset.state = "error";
      status.textContent = `Could not load: ${error.message}`;
    }
  }

  async function showOpenInvitations() {
    const open = await PulseApi.get(`/v1/projects/${state.project}/invitations`);
    const t = $("invitations");
    t.replaceChildren();
    const head = t.createTHead().insertRow();
    for (const c of ["email", "role", "sent", "expires", ""]) head.appendChild(Object.assign(document.createElement("th"), {textContent: c}));
    const body = t.createTBody();
    for (const i of open) {
      const tr = body.insertRow();
      tr.dataset.email = i.email;
      cells(tr, [i.email, i.role, (i.created_at || "").slice(0, 10), (i.expires_at || "").slice(0, 10),
                 confirmButton("Revoke", async () => {
                   await PulseApi.call("DELETE", `/v1/projects/${state.project}/invitations/${i.invitation_id}`)
                     .catch(error => { $("members-status").textContent = error.message; });
                   await showMembers();
                 })]);
    }
  }

  // Invitations to the signed-in user, shown above every view until accepted.
  async function showMyInvitations() {
    const box = $("my-invitations");
    let mine = [];
    try {
      mine = await PulseApi.get("/v1/invitations");
    } catch (error) {
      mine = [];
    }
    box.hidden = mine.length === 0;
    const t = $("invitations-mine");
    t.replaceChildren();
    const body = t.createTBody();
    for (const i of mine) {
      const tr = body.insertRow();
      tr.dataset.project = i.project_id;
      const accept = Object.assign(document.createElement("button"), {type: "button", textContent: "Accept"});
      accept.addEventListener("click", async () => {
        accept.disabled = true;
        try {
          await PulseApi.post(`/v1/invitations/${i.invitation_id}/accept`, {});
          writeState({project: i.project_id});
          await start();
        } catch (error) {
          setStatus(error.message);
          accept.disabled = false;
        }
      });
      cells(tr, [`${i.project_name || i.project_id} (${i.role})`, i.invited_by ? `from ${i.invited_by}` : "",
                 `until ${(i.expires_at || "").slice(0, 10)}`, accept]);
    }
  }

  async function removeMember(userId) {
    try {
      await PulseApi.call("DELETE", `/v1/projects/${state.project}/members/${userId}`);
    } catch (error) {
      $("members-status").textContent = error.message;
    }
    await showMembers();
  }

  $("member-add").addEventListener("submit", async e => {
    e.preventDefault();
    const email = $("member-email").value.trim();
    try {
      const answer = await PulseApi.call("POST", `/v1/projects/${state.project}/members`,
                                         {email, role: $("member-role").value});
      $("member-email").value = "";
      await showMembers();
      $("members-status").textContent = answer.status === 202
        ? `Invitation sent to ${email}: they join when, signed in with that address, they accept it.`
        : `${email} is now a member.`;
    } catch (error) {
      $("members-status").textContent = error.message;
      $("members-view").dataset.state = "error";
    }
  });

  // Routing ------------------------------------------------------------------

  async function route() {
    PulseStats.stopLive();
    const keyOnly = PulseApi.session && PulseApi.session.api_key;
    const view = keyOnly ? "stats" : state.view;
    show(view);
    if (view === "stats") await showStats();
    else if (view === "cohorts") await PulseCohorts.show(ctx);
    else if (view === "keys") await showKeys();
    else if (view === "members") await showMembers();
  }

  async function start() {
    setStatus("");
    const session = PulseApi.session;
    if (!session) { show("signin"); return; }
    document.body.dataset.access = session.api_key ? "key" : "account";
    $("who").textContent = session.email || "API key";
    if (!session.api_key) {
      PulseApi.resume();
      try {
        await showMyInvitations();
        await loadProjects();
      } catch (error) {
        if (PulseApi.session) setStatus(error.message);
        return;
      }
      if (!projects.length) { show("projects"); return; }
    }
    await route();
  }

  for (const a of document.querySelectorAll("#nav a[data-view]")) {
    a.addEventListener("click", e => {  // keep the project and range: change the view only
      e.preventDefault();
      writeState({view: a.dataset.view});
      route();
    });
  }

  window.addEventListener("hashchange", () => {
    const before = state;
    readState();
    if (PulseApi.session && (before.view !== state.view || before.project !== state.project)) {
      $("project").value = state.project;
      route();
    }
  });

  readState();
  start();
})();
