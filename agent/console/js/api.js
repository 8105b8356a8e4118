// ferry console — the operator API client: the same /v1 routes the CLI
// calls, same-origin, with the session cookie (HttpOnly, set by
// POST /ui/session) and the session's CSRF token on every mutating request.

const session = { csrf: null, access: null, agent: null, expiresAt: null };

/** An API error: HTTP status, the API's `error` text and its `refusal` (state-table reason). */
export class ApiError extends Error {
  constructor(status, body) {
    super((body && body.error) || `HTTP ${status}`);
    this.status = status;
    this.refusal = (body && body.refusal) || null;
  }
}

/** Told whether the agent answers (false: a request failed at the network level). */
let onReachable = () => {};
export function setReachableHandler(fn) {
  onReachable = fn;
}

/** fetch, telling `onReachable` whether the agent answered at all. */
async function send(path, init) {
  try {
    const resp = await fetch(path, init);
    onReachable(true);
    return resp;
  } catch (err) {
    onReachable(false);
    throw err;
  }
}

/** Called when a request answers 401 (session gone): the app shows the sign-in page. */
let onUnauthorized = () => {};
export function setUnauthorizedHandler(fn) {
  onUnauthorized = fn;
}

export function currentSession() {
  return session;
}

/** True when the session may change things (operator token). */
export function canAct() {
  return session.access === "operator";
}

function remember(body) {
  session.csrf = body.csrf;
  session.access = body.access;
  session.agent = body.agent;
  session.expiresAt = body.expires_at;
}

function forget() {
  session.csrf = null;
  session.access = null;
  session.agent = null;
  session.expiresAt = null;
}

async function parse(resp) {
  const text = await resp.text();
  if (!text) return null;
  try {
    return JSON.parse(text);
  } catch {
    return { error: text };
  }
}

/** Signs in with an operator or read-only token; throws ApiError (401) on a wrong token. */
export async function signIn(token) {
  const resp = await fetch("/ui/session", {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ token }),
    credentials: "same-origin",
  });
  const body = await parse(resp);
  if (!resp.ok) throw new ApiError(resp.status, body);
  remember(body);
  return body;
}

/** Restores the session of the cookie, or returns null. */
export async function resume() {
  const resp = await send("/ui/session", { credentials: "same-origin" });
  if (!resp.ok) {
    forget();
    return null;
  }
  const body = await parse(resp);
  remember(body);
  return body;
}

export async function signOut() {
  const headers = session.csrf ? { "X-CSRF-Token": session.csrf } : {};
  try {
    await fetch("/ui/session", { method: "DELETE", headers, credentials: "same-origin" });
  } finally {
    forget();
  }
}

/** Calls an operator API route; resolves to the parsed JSON body, throws ApiError. */
export async function call(method, path, body) {
  const headers = {};
  if (method !== "GET") headers["X-CSRF-Token"] = session.csrf || "";
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const resp = await send(path, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
    credentials: "same-origin",
  });
  const parsed = await parse(resp);
  if (resp.status === 401) {
    forget();
    onUnauthorized();
  }
  if (!resp.ok) throw new ApiError(resp.status, parsed);
  return parsed;
}

export const get = (path) => call("GET", path);

/** A path segment (group, service, policy or point name) escaped for a URL. */
export function seg(name) {
  return encodeURIComponent(String(name));
}

/**
 * Polls GET /v1/operations/{id} every second until it is no longer running;
 * `onUpdate` sees every state. Resolves to the finished operation.
 */
export async function waitOperation(id, onUpdate) {
  for (;;) {
    const op = await get(`/v1/operations/${seg(id)}`);
    onUpdate(op);
    if (!op.state || op.state.state !== "running") return op;
    await new Promise((resolve) => setTimeout(resolve, 1000));
  }
}
