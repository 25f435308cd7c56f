// The dashboard's access to the Pulse API: a signed-in session (an access
// token refreshed before it expires, and its refresh token) or a read API
// key, kept in this tab's sessionStorage; problems become Errors carrying
// the HTTP status and the problem's detail.
"use strict";

const PulseApi = (() => {
  const STORE = "pulse-session";
  const EARLY_MS = 60000;  // refresh this long before expiry (a fifth of the lifetime when that is shorter)
  let session = JSON.parse(sessionStorage.getItem(STORE) || "null");
  let timer = null;
  let refreshing = null;
  const signedOut = [];

  function save(next) {
    session = next;
    if (next) sessionStorage.setItem(STORE, JSON.stringify(next));
    else sessionStorage.removeItem(STORE);
  }

  function schedule() {
    clearTimeout(timer);
    if (!session || !session.refresh_token) return;
    const early = Math.min(EARLY_MS, session.ttl_ms / 5);
    timer = setTimeout(() => refresh().catch(() => {}), Math.max(1000, session.expires_at - early - Date.now()));
  }

  function accept(tokens, email) {
    const ttl = tokens.expires_in * 1000;
    save({access_token: tokens.access_token, refresh_token: tokens.refresh_token,
          expires_at: Date.now() + ttl, ttl_ms: ttl, email});
    schedule();
  }

  async function send(method, path, body, headers = {}) {
    const init = {method, headers: {"Accept": "application/json", ...headers}};
    if (body !== undefined) {
      init.body = JSON.stringify(body);
      init.headers["Content-Type"] = "application/json";
    }
    const response = await fetch(path, init);
    const data = response.status === 204 ? null : await response.json().catch(() => ({}));
    if (!response.ok) {
      const error = new Error((data && (data.detail || data.title)) || `HTTP ${response.status}`);
      error.status = response.status;
      error.problem = data;
      throw error;
    }
    return {status: response.status, data};
  }

  function refresh() {
    if (!refreshing) {
      const spent = session && session.refresh_token;
      refreshing = send("POST", "/v1/auth/refresh", {refresh_token: spent})
        .then(answer => accept(answer.data, session && session.email))
        .catch(error => { end("Your session has ended: sign in again."); throw error; })
        .finally(() => { refreshing = null; });
    }
    return refreshing;
  }

  function end(message) {
    clearTimeout(timer);
    save(null);
    for (const listener of signedOut) listener(message);
  }

  function credentials() {
    if (!session) return {};
    if (session.api_key) return {"X-API-Key": session.api_key};
    return {"Authorization": "Bearer " + session.access_token};
  }

  // One API call with the session's credential; a 401 on a signed-in session
  // refreshes once and retries.
  async function call(method, path, body, retry = true) {
    try {
      return await send(method, path, body, credentials());
    } catch (error) {
      if (error.status === 401 && retry && session && session.refresh_token) {
        await refresh();
        return call(method, path, body, false);
      }
      throw error;
    }
  }

  return {
    get session() { return session; },
    onSignedOut(listener) { signedOut.push(listener); },
    resume() { schedule(); },
    async signIn(email, password) {
      accept((await send("POST", "/v1/auth/login", {email, password})).data, email);
    },
    async register(email, password) {
      await send("POST", "/v1/auth/register", {email, password});
      await this.signIn(email, password);
    },
    useKey(key) { save({api_key: key}); },
    async signOut() {
      const token = session && session.refresh_token;
      if (token) await send("POST", "/v1/auth/logout", {refresh_token: token}).catch(() => {});
      end("");
    },
    call,
    async get(path) { return (await call("GET", path)).data; },
    async post(path, body) { return (await call("POST", path, body)).data; },
    credentials,
  };
})();
