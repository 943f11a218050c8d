// The HTTP API client: tokens kept in localStorage and refreshed before they
// expire (or once on a 401), problem+json turned into readable errors, and
// Server-Sent Events read with fetch (EventSource cannot send a token).

const STORE = "ourvidz.session";

export class ApiError extends Error {
  constructor(status, problem) {
    const fields = (problem.errors || []).map((e) => `${e.field}: ${e.message}`);
    super(fields.length ? fields.join("; ") : problem.detail || problem.title || `HTTP ${status}`);
    this.status = status;
    this.problem = problem;
    this.fields = Object.fromEntries((problem.errors || []).map((e) => [e.field, e.message]));
  }
}

let session = load();
const listeners = new Set();

function load() {
  try {
    return JSON.parse(localStorage.getItem(STORE)) || null;
  } catch {
    return null;
  }
}

function save(value) {
  session = value;
  if (value) localStorage.setItem(STORE, JSON.stringify(value));
  else localStorage.removeItem(STORE);
  for (const fn of listeners) fn(session);
}

export function currentUser() {
  return session ? session.user : null;
}

export function onSessionChange(fn) {
  listeners.add(fn);
  return () => listeners.delete(fn);
}

function keep(tokens) {
  save({
    user: tokens.user,
    access: tokens.access_token,
    refresh: tokens.refresh_token,
    // Refresh a little before the access token runs out.
    expires: Date.now() + (tokens.expires_in - 30) * 1000,
  });
}

// Sign-up answers the same whether or not the address already has an account,
// and hands out no tokens: sign in with the same details next.
export async function signUp(email, password) {
  await request("POST", "/v1/auth/signup", { email, password }, { auth: false });
  try {
    await signIn(email, password);
  } catch (err) {
    if (err.status !== 401) throw err;
    throw new ApiError(401, {
      title: "Could not sign in",
      detail: "Could not sign in with this address and password. If the address already has an account, sign in with its password.",
    });
  }
}

export async function signIn(email, password) {
  keep(await request("POST", "/v1/auth/login", { email, password }, { auth: false }));
}

export function signOut() {
  save(null);
}

let refreshing = null;

async function refresh() {
  if (!session) throw new ApiError(401, { title: "Please sign in." });
  refreshing ??= (async () => {
    try {
      keep(await request("POST", "/v1/auth/refresh", { refresh_token: session.refresh }, { auth: false }));
    } catch (err) {
      save(null);
      throw err;
    } finally {
      refreshing = null;
    }
  })();
  return refreshing;
}

async function authHeader() {
  if (!session) return {};
  if (Date.now() > session.expires) await refresh();
  return { Authorization: `Bearer ${session.access}` };
}

async function problemOf(response) {
  const type = response.headers.get("content-type") || "";
  if (type.includes("json")) {
    try {
      return await response.json();
    } catch {
      /* fall through */
    }
  }
  return { title: response.statusText || `HTTP ${response.status}` };
}

/** One API call. `body` is JSON, or a FormData for uploads; `headers` are added. */
export async function request(method, path, body, { auth = true, retry = true, signal, headers: extra } = {}) {
  const headers = { ...(auth ? await authHeader() : {}), ...extra };
  let payload;
  if (body instanceof FormData) payload = body;
  else if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    payload = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(path, { method, headers, body: payload, signal });
  } catch (err) {
    if (err.name === "AbortError") throw err;
    throw new ApiError(0, { title: "The server cannot be reached. Check your connection and try again." });
  }
  if (response.status === 401 && auth && retry && session) {
    await refresh();
    return request(method, path, body, { auth, retry: false, signal, headers: extra });
  }
  if (!response.ok) throw new ApiError(response.status, await problemOf(response));
  if (response.status === 204) return null;
  return response.json();
}

/** A key per submission (the Idempotency-Key header), so a retried POST never makes two jobs. */
export function idempotencyKey() {
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

export const api = {
  get: (path, opts) => request("GET", path, undefined, opts),
  post: (path, body, opts) => request("POST", path, body ?? {}, opts),
  put: (path, body, opts) => request("PUT", path, body, opts),
  patch: (path, body, opts) => request("PATCH", path, body, opts),
  del: (path, opts) => request("DELETE", path, undefined, opts),
};

/**
 * Read an SSE stream (GET, or POST with a JSON body) and call onEvent(name, data, id)
 * for each event until it ends or `signal` aborts. Resumes with Last-Event-ID
 * after a dropped connection when `resume` is true.
 */
export async function stream(path, onEvent, { method = "GET", body, signal, resume = true } = {}) {
  let lastId = null;
  for (let attempt = 0; attempt < 5; attempt++) {
    const headers = { ...(await authHeader()), Accept: "text/event-stream" };
    if (lastId) headers["Last-Event-ID"] = lastId;
    if (body !== undefined) headers["Content-Type"] = "application/json";
    let response;
    try {
      response = await fetch(path, {
        method,
        headers,
        body: body === undefined ? undefined : JSON.stringify(body),
        signal,
      });
    } catch (err) {
      if (err.name === "AbortError") return;
      if (!resume) throw new ApiError(0, { title: "The server cannot be reached." });
      await new Promise((r) => setTimeout(r, 1000 * (attempt + 1)));
      continue;
    }
    if (response.status === 401 && session && attempt === 0) {
      await refresh();
      continue;
    }
    if (!response.ok) throw new ApiError(response.status, await problemOf(response));
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    let fields = {};
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) return;
        buffer += value;
        let nl;
        while ((nl = buffer.indexOf("\n")) >= 0) {
          const line = buffer.slice(0, nl).replace(/\r$/, "");
          buffer = buffer.slice(nl + 1);
          if (line === "") {
            if (fields.data !== undefined) {
              if (fields.id) lastId = fields.id;
              let data = fields.data;
              try {
                data = JSON.parse(data);
              } catch {
                /* plain text */
              }
              onEvent(fields.event || "message", data, fields.id);
            }
            fields = {};
          } else if (!line.startsWith(":")) {
            const i = line.indexOf(":");
            const name = i < 0 ? line : line.slice(0, i);
            const val = i < 0 ? "" : line.slice(i + 1).replace(/^ /, "");
            fields[name] = fields[name] !== undefined && name === "data" ? `${fields[name]}\n${val}` : val;
          }
        }
      }
    } catch (err) {
      if (err.name === "AbortError" || signal?.aborted) return;
      if (!resume) throw err;
    }
  }
}
