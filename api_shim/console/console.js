// The runrelay console: plain JS against the public HTTP API, no build step.
// The API key lives in sessionStorage (this tab only) and goes out only in the Authorization
// header; streams are followed with EventSource and a run-scoped, read-only stream token.
"use strict";

const KEY_STORAGE = "runrelay.apiKey";
const EVENT_TYPES = ["run_queued", "run_started", "agent_resolved", "output_text_delta",
  "tool_call_delta", "tool_call_result", "approval_required", "suggestions", "custom",
  "metadata", "usage", "error", "chat_completed", "done"];
const TERMINAL = new Set(["completed", "failed", "cancelled", "expired"]);
const PAGE_SIZE = 15;
const $ = (id) => document.getElementById(id);

const state = {
  key: sessionStorage.getItem(KEY_STORAGE),
  cursors: [null],          // cursor of each page seen; the last one is the current page
  nextCursor: null,
  run: null,                // the selected run object
  stream: null,             // { runId, source, lastSeq, done, retry }
  timers: [],
};

class ApiError extends Error {
  constructor(status, body) {
    const err = (body && body.error) || {};
    super(err.message || `HTTP ${status}`);
    this.status = status;
    this.code = err.code;
  }
}

async function api(method, path, body) {
  const init = { method, headers: { Authorization: `Bearer ${state.key}` } };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const response = await fetch(path, init);
  const text = await response.text();
  const data = text ? JSON.parse(text) : null;
  if (response.status === 401) signOut("The API key was refused (unknown or revoked).");
  if (!response.ok) throw new ApiError(response.status, data);
  return data;
}

function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(props)) {
    if (name === "class") node.className = value;
    else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else node.setAttribute(name, value);
  }
  for (const child of children) node.append(child);
  return node;
}

function statusBadge(status) {
  return el("span", { class: `status ${status}` }, status);
}

function shortTime(iso) {
  return iso ? new Date(iso).toLocaleTimeString() : "";
}

// --- sign in ----------------------------------------------------------------------------------

async function signIn(key) {
  state.key = key;
  try {
    await api("GET", "/v1/usage");
  } catch (error) {
    state.key = null;
    $("signin-error").textContent = error.status === 401
      ? "This API key is not valid (unknown or revoked)." : `Sign in failed: ${error.message}`;
    return;
  }
  sessionStorage.setItem(KEY_STORAGE, key);
  $("signin").hidden = true;
  $("app").hidden = false;
  $("whoami").hidden = false;
  await Promise.all([loadAgents(), refreshRuns(), refreshUsage()]);
  state.timers.push(setInterval(refreshRuns, 2000), setInterval(refreshUsage, 5000),
    setInterval(refreshRun, 2000));
  const wanted = new URLSearchParams(location.hash.slice(1)).get("run");
  if (wanted) selectRun(wanted);
}

function signOut(message) {
  sessionStorage.removeItem(KEY_STORAGE);
  state.key = null;
  state.timers.forEach(clearInterval);
  state.timers = [];
  closeStream();
  $("app").hidden = true;
  $("whoami").hidden = true;
  $("signin").hidden = false;
  $("signin-error").textContent = message || "";
}

// --- usage, agents, runs list -----------------------------------------------------------------

async function refreshUsage() {
  const usage = await api("GET", "/v1/usage");
  $("tenant").textContent = `tenant ${usage.tenant_id || ""}`;
  const rows = [];
  const flat = (prefix, value) => {
    if (value && typeof value === "object" && !Array.isArray(value)) {
      for (const [k, v] of Object.entries(value)) flat(prefix ? `${prefix}.${k}` : k, v);
    } else if (prefix !== "tenant_id" && prefix !== "object") {
      rows.push(el("tr", {}, el("th", {}, prefix), el("td", {}, value === null ? "no limit" : String(value))));
    }
  };
  flat("", usage);
  $("usage").tBodies[0].replaceChildren(...rows);
}

async function loadAgents() {
  const agents = await api("GET", "/v1/agents");
  $("new-agent").replaceChildren(...agents.data.map(
    (a) => el("option", { value: a.name }, `${a.display_name} (${a.name})`)));
}

function filters() {
  const params = new URLSearchParams({ limit: String(PAGE_SIZE) });
  const status = $("filter-status").value;
  const agent = $("filter-agent").value.trim();
  const thread = $("filter-thread").value.trim();
  if (status) params.set("status", status);
  if (agent) params.set("agent", agent);
  if (thread) params.set("thread_id", thread);
  const cursor = state.cursors[state.cursors.length - 1];
  if (cursor) params.set("cursor", cursor);
  return params;
}

async function refreshRuns() {
  const page = await api("GET", `/v1/runs?${filters()}`);
  state.nextCursor = page.next_cursor;
  const rows = page.data.map((run) => el("tr", {
    "data-run-id": run.id,
    "data-status": run.status,
    class: state.run && state.run.id === run.id ? "selected" : "",
    onclick: () => selectRun(run.id),
  }, el("td", {}, el("code", {}, run.id)), el("td", {}, run.agent.name),
  el("td", {}, statusBadge(run.status)), el("td", {}, shortTime(run.created_at))));
  $("runs").tBodies[0].replaceChildren(...rows);
  $("page-older").disabled = !page.has_more;
  $("page-newer").disabled = state.cursors.length <= 1;
  $("page-info").textContent = `page ${state.cursors.length}`;
}

// --- one run ----------------------------------------------------------------------------------

async function selectRun(runId, streamUrl) {
  location.hash = `run=${encodeURIComponent(runId)}`;
  closeStream();
  $("run-empty").hidden = true;
  $("run-detail").hidden = false;
  $("output").replaceChildren();
  $("events").replaceChildren();
  $("events").dataset.duplicates = "0";
  $("run-usage").textContent = "";
  state.run = { id: runId };
  state.stream = { runId, source: null, lastSeq: 0, done: false, retry: null };
  await refreshRun();
  follow(state.stream, streamUrl);
  refreshRuns();
}

async function refreshRun() {
  if (!state.run) return;
  const run = await api("GET", `/v1/runs/${encodeURIComponent(state.run.id)}`);
  if (!state.run || state.run.id !== run.id) return;
  state.run = run;
  $("run-id").textContent = run.id;
  $("run-status").replaceWith(Object.assign(statusBadge(run.status), { id: "run-status" }));
  $("run-agent").textContent = run.agent.name;
  $("run-thread").textContent = run.thread_id || "";
  $("run-cancel").disabled = TERMINAL.has(run.status);
  renderApprovals(run);
}

function renderApprovals(run) {
  const pending = run.status === "requires_action" && run.required_action
    ? run.required_action.tool_calls.filter((c) => c.approved === null) : [];
  $("approvals").hidden = pending.length === 0;
  $("approval-list").replaceChildren(...pending.map((call) => {
    const reason = el("input", { placeholder: "reason (if rejected)", "aria-label": "reason" });
    const decide = (approved) => async () => {
      const body = { call_id: call.tool_call_id, approved };
      if (!approved && reason.value.trim()) body.reason = reason.value.trim();
      await api("POST", `/v1/runs/${encodeURIComponent(run.id)}/approvals`, body);
      await refreshRun();
    };
    return el("li", { "data-call-id": call.tool_call_id },
      el("code", {}, `${call.name}(${JSON.stringify(call.arguments)})`), " ",
      el("button", { type: "button", class: "approve", onclick: decide(true) }, "Approve"), " ",
      el("button", { type: "button", class: "reject", onclick: decide(false) }, "Reject"), " ",
      reason);
  }));
}

// --- the live stream --------------------------------------------------------------------------

function closeStream() {
  if (!state.stream) return;
  clearTimeout(state.stream.retry);
  if (state.stream.source) state.stream.source.close();
  state.stream.done = true;
}

async function follow(stream, streamUrl) {
  if (stream.done || state.stream !== stream) return;
  let url = streamUrl;
  try {
    if (!url) {
      const token = await api("POST", `/v1/runs/${encodeURIComponent(stream.runId)}/stream_token`);
      url = token.stream_url;
    }
  } catch (error) {
    return retryLater(stream, `reconnecting (${error.message})`);
  }
  if (stream.lastSeq > 0) url += `&after=${stream.lastSeq}`;
  const source = new EventSource(url);
  stream.source = source;
  source.onopen = () => setStreamState("live");
  for (const type of EVENT_TYPES) {
    source.addEventListener(type, (message) => onEvent(stream, JSON.parse(message.data)));
  }
  source.onerror = () => {
    if (stream.done) return;
    if (source.readyState === EventSource.CLOSED) {
      // Refused (a 204 after `done`, an expired token, the API down): a fresh token and the
      // last seq seen, so nothing is shown twice.
      retryLater(stream, "reconnecting");
    } else {
      setStreamState("reconnecting");  // EventSource retries by itself, with Last-Event-ID
    }
  };
}

function retryLater(stream, message) {
  setStreamState(message);
  if (stream.source) stream.source.close();
  stream.retry = setTimeout(() => follow(stream), 1000);
}

function setStreamState(text) {
  $("run-stream-state").textContent = text;
}

function onEvent(stream, event) {
  if (state.stream !== stream) return;
  const log = $("events");
  if (event.seq <= stream.lastSeq) {  // never expected: the API resumes after Last-Event-ID
    log.dataset.duplicates = String(Number(log.dataset.duplicates) + 1);
    return;
  }
  stream.lastSeq = event.seq;
  log.append(el("li", { "data-seq": String(event.seq), "data-type": event.type },
    el("span", { class: "seq" }, String(event.seq)), el("span", { class: "type" }, event.type),
    " ", describe(event)));
  log.scrollTop = log.scrollHeight;
  if (event.type === "output_text_delta") {
    $("output").append(el("span", { "data-seq": String(event.seq) }, event.delta));
  } else if (event.type === "metadata" && event.superseded) {
    markSuperseded(event.superseded.from_seq, event.superseded.to_seq);
  } else if (event.type === "usage" || event.type === "done") {
    const u = event.usage || {};
    $("run-usage").textContent = `usage: ${u.prompt_tokens || 0} prompt + `
      + `${u.completion_tokens || 0} completion = ${u.total_tokens || 0} tokens`;
  } else if (event.type === "error") {
    $("output").append(el("div", { class: "error" }, `${event.code}: ${event.message}`));
  }
  if (event.type === "approval_required") setTimeout(refreshRun, 300);
  if (event.type === "done") {
    stream.done = true;
    stream.source.close();
    setStreamState(`ended: ${event.status}`);
    refreshRun();
    refreshRuns();
  }
}

function describe(event) {
  switch (event.type) {
    case "output_text_delta": return JSON.stringify(event.delta);
    case "tool_call_delta": return `${event.name} ${event.arguments_delta || ""}`;
    case "tool_call_result":
      return `${event.name}(${JSON.stringify(event.arguments)}) → `
        + JSON.stringify(event.error == null ? event.result : { error: event.error });
    case "approval_required":
      return `${event.name}(${JSON.stringify(event.arguments)}) waits for approval`;
    case "metadata":
      return event.superseded
        ? `events ${event.superseded.from_seq}–${event.superseded.to_seq} superseded (the run resumed)`
        : JSON.stringify(event);
    case "error": return `${event.code}: ${event.message}`;
    case "done": return `${event.status}`;
    case "run_started": return `attempt ${event.attempt || 1}`;
    default: return "";
  }
}

function markSuperseded(from, to) {
  for (const node of document.querySelectorAll("#output [data-seq], #events [data-seq]")) {
    const seq = Number(node.dataset.seq);
    if (seq >= from && seq <= to) node.classList.add("superseded");
  }
}

// --- wiring -----------------------------------------------------------------------------------

function wire() {
  $("signin-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const key = $("api-key").value.trim();
    $("api-key").value = "";
    signIn(key);
  });
  $("signout").addEventListener("click", () => signOut());
  $("filters").addEventListener("submit", (e) => {
    e.preventDefault();
    state.cursors = [null];
    refreshRuns();
  });
  $("page-older").addEventListener("click", () => {
    state.cursors.push(state.nextCursor);
    refreshRuns();
  });
  $("page-newer").addEventListener("click", () => {
    state.cursors.pop();
    refreshRuns();
  });
  $("run-cancel").addEventListener("click", async () => {
    $("run-cancel").disabled = true;
    try {
      await api("POST", `/v1/runs/${encodeURIComponent(state.run.id)}/cancel`);
    } catch (error) {
      setStreamState(`cancel refused: ${error.message}`);
    }
    refreshRun();
  });
  $("new-run").addEventListener("submit", async (e) => {
    e.preventDefault();
    const body = { agent: $("new-agent").value };
    const message = $("new-message").value.trim();
    const thread = $("new-thread").value.trim();
    if (message) body.message = message;
    if (thread) body.thread_id = thread;
    $("new-run-error").textContent = "";
    try {
      const run = await api("POST", "/v1/runs", body);
      $("new-message").value = "";
      selectRun(run.id, run.stream_url);
    } catch (error) {
      $("new-run-error").textContent = error.message;
    }
  });
  if (state.key) signIn(state.key);
}

wire();
