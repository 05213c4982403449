// The clipforge web console: a single page over the service's /v1 API, with no dependencies and no build step.
// Every API call sends the user's key (Authorization: Bearer); server data is put in the page as text, never as HTML.

const KEY_STORAGE = "clipforge.apiKey";
const MODE_STORAGE = "clipforge.mode"; // "open": signed in without a key (an open service on loopback)
const ACTIVE = new Set(["queued", "running", "cancelling"]);
const EVALUATION_ACTIVE = new Set(["queued", "running"]);
const JOBS_PAGE_SIZE = 20;
const JOB_LIST_REFRESH_MS = 5000;
const JOB_REFRESH_MIN_MS = 1500; // progress events arrive several times a second; the job (for its ETA) is re-read at most this often
const EVALUATION_POLL_MS = 1000;
const STREAM_RETRY_MAX_MS = 10000;
const LOGGED_EVENT_KINDS = new Set(["status", "stage", "warning", "error"]);
// The console lives at <root>/console/, the API at <root>/ (also behind a proxy that adds a path prefix).
const API_ROOT = new URL("../", document.baseURI);

// -- small DOM helpers -------------------------------------------------------------------------------------------

const $ = (id) => document.getElementById(id);

/** An element with attributes (on* keys become listeners) and children (strings become text). */
function el(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (value === undefined || value === null || value === false) continue;
    if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else if (name === "className") node.className = value;
    else node.setAttribute(name, value === true ? "" : String(value));
  }
  node.append(...children.flat().filter((child) => child !== null && child !== undefined));
  return node;
}

/** Says ``message`` to screen readers through the polite live region (cleared first, so a repeat is announced). */
function announce(message) {
  const region = $("announcer");
  region.textContent = "";
  window.setTimeout(() => {
    region.textContent = message;
  }, 50);
}

function sleep(ms, signal) {
  return new Promise((resolve) => {
    const timer = window.setTimeout(resolve, ms);
    signal?.addEventListener("abort", () => {
      window.clearTimeout(timer);
      resolve();
    });
  });
}

function percent(fraction) {
  return `${Math.round((fraction ?? 0) * 100)}%`;
}

function accuracy(value) {
  return typeof value === "number" ? `${(value * 100).toFixed(1)}%` : "—";
}

function formatDuration(seconds) {
  const s = Math.max(0, Math.round(seconds));
  if (s < 60) return `${s} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min ${s % 60} s`;
  return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
}

function formatBytes(size) {
  if (size < 1024) return `${size} B`;
  if (size < 1024 * 1024) return `${(size / 1024).toFixed(1)} KiB`;
  return `${(size / 1024 / 1024).toFixed(1)} MiB`;
}

function formatTime(iso) {
  return iso ? new Date(iso).toLocaleString() : "—";
}

/** A status as a badge: its word, with a colour that only repeats it. */
function statusBadge(status, id = undefined) {
  return el("span", { id, className: `badge status-${status}` }, status);
}

function classNamesOf(job) {
  return (job.spec?.classes ?? []).map((entry) => (typeof entry === "string" ? entry : entry.name));
}

/** A random Idempotency-Key (crypto.randomUUID needs a secure context; a console on a LAN address has none). */
function newIdempotencyKey() {
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

// -- the API -----------------------------------------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, code, message, details = null) {
    super(`[${code}] ${message}`);
    this.status = status;
    this.code = code;
    this.details = details;
    this.plainMessage = message;
  }
}

const session = { apiKey: null, signedIn: false };

async function errorFrom(response) {
  try {
    const { error } = await response.json();
    return new ApiError(response.status, error.code, error.message, error.details);
  } catch {
    return new ApiError(response.status, `http_${response.status}`, response.statusText || "the service answered with an error");
  }
}

/**
 * A request to the API with the session's key; resolves to the Response, rejects with ApiError for an error answer
 * (a 401 also signs the user out, unless ``signingIn``) or no answer (status 0).
 */
async function api(method, path, { json, body, headers = {}, signal, signingIn = false, apiKey = session.apiKey } = {}) {
  const init = { method, headers: { ...headers }, signal, cache: "no-store" };
  if (apiKey) init.headers.Authorization = `Bearer ${apiKey}`;
  if (json !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(json);
  } else if (body !== undefined) {
    init.body = body; // FormData: the browser writes the multipart boundary
  }
  let response;
  try {
    response = await fetch(new URL(path.replace(/^\//, ""), API_ROOT), init);
  } catch (error) {
    if (error.name === "AbortError") throw error;
    throw new ApiError(0, "unreachable", `the service cannot be reached (${error.message})`);
  }
  if (response.ok) return response;
  const error = await errorFrom(response);
  if (response.status === 401 && !signingIn) signOut(error);
  throw error;
}

async function apiJson(method, path, options = {}) {
  const response = await api(method, path, { ...options, headers: { Accept: "application/json", ...options.headers } });
  return response.status === 204 ? null : response.json();
}

/** Shows an error's code and message (and each problem of a submission that had several) in ``container``. */
function showError(container, error) {
  container.replaceChildren();
  if (!error) return;
  if (!(error instanceof ApiError)) {
    console.error(error);
    error = new ApiError(0, "console_error", error.message ?? String(error));
  }
  container.append(el("p", {}, el("code", {}, error.code), ": ", error.plainMessage));
  if (Array.isArray(error.details) && error.details.length > 1) {
    const problems = error.details.map((problem) => el("li", {}, el("code", {}, problem.code ?? "?"), ": ", problem.message ?? ""));
    container.append(el("ul", {}, problems));
  }
}

/**
 * Server-sent events from a fetch() response body, as {event, data, id} objects.
 *
 * Why not EventSource: it cannot send an Authorization header, and the event stream needs the API key like every other
 * call. So the stream is read with fetch() and parsed here, per the framing of the HTML standard ("Server-sent
 * events"): UTF-8 lines ending in CRLF, LF or CR; "field: value" lines; a blank line ends an event; lines that start
 * with ":" are comments (the server's keep-alive pings). A "retry" field is ignored: the follower has its own back-off.
 */
async function* readServerSentEvents(body) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  let eventType = "";
  let dataLines = [];
  let lastEventId = null;
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return; // an event that no blank line ended is incomplete: dropped, as the standard says
      buffer += value;
      // A CR at the very end may be the first half of a CRLF split between two reads: keep it for the next one.
      const cut = buffer.endsWith("\r") ? buffer.length - 1 : buffer.length;
      const lines = buffer.slice(0, cut).split(/\r\n|\r|\n/);
      buffer = lines.pop() + buffer.slice(cut);
      for (const line of lines) {
        if (line === "") {
          if (dataLines.length > 0) yield { event: eventType || "message", data: dataLines.join("\n"), id: lastEventId };
          eventType = "";
          dataLines = [];
          continue;
        }
        if (line.startsWith(":")) continue;
        const colon = line.indexOf(":");
        const field = colon < 0 ? line : line.slice(0, colon);
        let fieldValue = colon < 0 ? "" : line.slice(colon + 1);
        if (fieldValue.startsWith(" ")) fieldValue = fieldValue.slice(1);
        if (field === "event") eventType = fieldValue;
        else if (field === "data") dataLines.push(fieldValue);
        else if (field === "id" && !fieldValue.includes("\0")) lastEventId = fieldValue;
      }
    }
  } finally {
    reader.cancel().catch(() => {});
  }
}

// -- sign-in -----------------------------------------------------------------------------------------------------

/** Checks a key (or no key: open mode) with one cheap request; signs in when the service accepts it. */
async function signIn(apiKey) {
  const error = $("sign-in-error");
  showError(error, null);
  try {
    await api("GET", "/v1/jobs?limit=1", { apiKey, signingIn: true });
  } catch (failure) {
    if (!apiKey && failure.code === "missing_api_key") {
      const message = `${failure.plainMessage}. This service has API keys, or is not on loopback: sign in with a key.`;
      failure = new ApiError(failure.status, failure.code, message);
    }
    showError(error, failure);
    if (failure.status === 401) {
      // Refused: forget it. Kept after a network failure, so that a reload retries it.
      sessionStorage.removeItem(KEY_STORAGE);
      sessionStorage.removeItem(MODE_STORAGE);
    }
    return false;
  }
  session.apiKey = apiKey;
  session.signedIn = true;
  if (apiKey) {
    sessionStorage.setItem(KEY_STORAGE, apiKey);
    sessionStorage.removeItem(MODE_STORAGE);
  } else {
    sessionStorage.setItem(MODE_STORAGE, "open");
    sessionStorage.removeItem(KEY_STORAGE);
  }
  $("session-label").textContent = apiKey ? "Signed in with an API key" : "Open mode (no API key)";
  $("session").hidden = false;
  $("main-nav").hidden = false;
  $("api-key").value = "";
  announce(apiKey ? "Signed in." : "Signed in, open mode.");
  return true;
}

/** Forgets the key; a failed request's ``error`` (a revoked key, say) is shown on the sign-in page. */
function signOut(error = null) {
  session.apiKey = null;
  session.signedIn = false;
  sessionStorage.removeItem(KEY_STORAGE);
  sessionStorage.removeItem(MODE_STORAGE);
  $("session").hidden = true;
  $("main-nav").hidden = true;
  leaveViews();
  showView("sign-in");
  showError($("sign-in-error"), error);
  announce(error ? "Signed out: the service refused the key." : "Signed out.");
}

// -- views and routing -------------------------------------------------------------------------------------------

const VIEWS = ["sign-in", "jobs", "new", "job", "pools"];
const pageCleanups = []; // what the current view started (streams, timers, blob URLs), undone when it is left

function leaveViews() {
  while (pageCleanups.length) pageCleanups.pop()();
}

function showView(name) {
  $("loading").hidden = true;
  for (const view of VIEWS) $(`view-${view}`).hidden = view !== name;
  const heading = $(`view-${name}`).querySelector("h1");
  document.title = `${heading.textContent.trim()} · clipforge console`;
  heading.focus({ preventScroll: false }); // moves screen readers and keyboard users to the new page's heading
}

function route() {
  leaveViews();
  if (!session.signedIn) {
    showView("sign-in");
    return;
  }
  const hash = window.location.hash || "#/jobs";
  const jobMatch = /^#\/jobs\/([A-Za-z0-9_-]+)$/.exec(hash);
  if (jobMatch) openJob(jobMatch[1]);
  else if (hash === "#/new") openNewJob();
  else if (hash === "#/pools") openPools();
  else openJobList();
}

// -- image pools -------------------------------------------------------------------------------------------------

function poolRow(current, pool) {
  const thumbnails = el("img", { alt: `The first images of ${pool.id}`, class: "pool-thumbnails" });
  showBlobImage(current, pool.thumbnails_url, thumbnails, $("pools-error"));
  const remove = el("button", { type: "button", "aria-label": `Delete ${pool.id}` }, "Delete");
  remove.addEventListener("click", async () => {
    remove.disabled = true;
    try {
      await apiJson("DELETE", `/v1/pools/${pool.id}`);
      announce(`Deleted ${pool.id}.`);
      openPools();
    } catch (error) {
      showError($("pools-error"), error);
      remove.disabled = false;
    }
  });
  const using = pool.jobs_using.length ? pool.jobs_using.map((id) => el("a", { href: `#/jobs/${id}` }, el("code", {}, id))) : ["none"];
  return el(
    "tr",
    {},
    el("td", {}, el("code", {}, pool.id)),
    el("td", {}, pool.name ?? ""),
    el("td", {}, String(pool.image_count)),
    el("td", {}, `${(pool.bytes / 1e6).toFixed(1)} MB`),
    el("td", {}, ...using),
    el("td", {}, thumbnails),
    el("td", {}, remove),
  );
}

async function openPools() {
  const controller = new AbortController();
  const current = { signal: controller.signal, blobUrls: [] };
  page = current;
  pageCleanups.push(() => {
    controller.abort();
    for (const url of current.blobUrls) URL.revokeObjectURL(url);
    page = null;
  });
  showView("pools");
  showError($("pools-error"), null);
  try {
    const { data } = await apiJson("GET", "/v1/pools", { signal: current.signal });
    if (page !== current) return;
    $("pools-body").replaceChildren(...data.map((pool) => poolRow(current, pool)));
    $("pools-empty").hidden = data.length > 0;
  } catch (error) {
    if (error.name !== "AbortError") showError($("pools-error"), error);
  }
}

async function createPool(event) {
  event.preventDefault();
  const form = new FormData();
  for (const file of $("pool-images").files) form.append("images", file, file.name);
  const archive = $("pool-archive").files[0];
  if (archive) form.append("archive", archive, archive.name);
  const name = $("pool-name").value.trim();
  if (name) form.append("name", name);
  const button = $("pool-form").querySelector("button[type=submit]");
  button.disabled = true;
  try {
    const pool = await apiJson("POST", "/v1/pools", { body: form });
    $("pool-form").reset();
    announce(`Created ${pool.id} with ${pool.image_count} images.`);
    openPools();
  } catch (error) {
    showError($("pools-error"), error);
  } finally {
    button.disabled = false;
  }
}

// -- the job list ------------------------------------------------------------------------------------------------

const jobList = { nextAfter: null, pages: 0 };

function jobRow(job) {
  const progress = el("progress", { max: 1, value: job.progress, "aria-label": `Progress of ${job.id}` });
  return el(
    "tr",
    {},
    el("td", {}, el("a", { href: `#/jobs/${job.id}` }, el("code", {}, job.id))),
    el("td", {}, classNamesOf(job).join(", ")),
    el("td", {}, statusBadge(job.status)),
    el("td", {}, job.stage ?? "—"),
    el("td", { className: "nowrap" }, progress, " ", percent(job.progress)),
    el("td", { className: "nowrap" }, formatTime(job.created_at)),
  );
}

async function loadJobs({ more = false } = {}) {
  const params = new URLSearchParams({ limit: String(JOBS_PAGE_SIZE) });
  const status = $("status-filter").value;
  if (status) params.set("status", status);
  if (more && jobList.nextAfter) params.set("after", jobList.nextAfter);
  try {
    const page = await apiJson("GET", `/v1/jobs?${params}`);
    showError($("jobs-error"), null);
    const rows = page.data.map(jobRow);
    if (more) {
      $("jobs-body").append(...rows);
      jobList.pages += 1;
    } else {
      $("jobs-body").replaceChildren(...rows);
      jobList.pages = 1;
    }
    jobList.nextAfter = page.next_after;
    $("more-jobs").hidden = !page.has_more;
    $("jobs-empty").hidden = $("jobs-body").children.length > 0;
    return page.data;
  } catch (error) {
    showError($("jobs-error"), error);
    return [];
  }
}

async function openJobList() {
  showView("jobs");
  const firstPage = await loadJobs();
  let activeShown = firstPage.some((job) => ACTIVE.has(job.status));
  // While a listed job is active the first page refreshes by itself (not once older pages are loaded below it).
  const timer = window.setInterval(async () => {
    if (activeShown && jobList.pages === 1) activeShown = (await loadJobs()).some((job) => ACTIVE.has(job.status));
  }, JOB_LIST_REFRESH_MS);
  pageCleanups.push(() => window.clearInterval(timer));
}

// -- a new job ---------------------------------------------------------------------------------------------------

const newJob = { idempotencyKey: newIdempotencyKey(), exampleInputs: new Map(), teachersLoaded: false };

function parseClassNames(text) {
  return text
    .split(/[\n,]/)
    .map((name) => name.trim())
    .filter((name) => name.length > 0);
}

/** One file chooser per class name typed; a class that stays keeps its chooser (and the files chosen in it). */
function renderExampleInputs() {
  const names = [...new Set(parseClassNames($("classes").value))];
  const kept = new Map();
  const fields = names.map((name, index) => {
    let entry = newJob.exampleInputs.get(name);
    if (!entry) {
      const id = `example-${index}-${newIdempotencyKey().slice(0, 8)}`;
      const input = el("input", { id, type: "file", accept: "image/*", multiple: true });
      entry = { input, field: el("div", { className: "field" }, el("label", { for: id }, `Example images of ${name}`), input) };
    }
    kept.set(name, entry);
    return entry.field;
  });
  newJob.exampleInputs = kept;
  $("example-inputs").replaceChildren(...fields);
}

async function loadTeachers() {
  if (newJob.teachersLoaded) return;
  try {
    const { data } = await apiJson("GET", "/v1/teachers");
    const select = $("teacher");
    for (const teacher of data) {
      select.append(el("option", { value: teacher.name }, teacher.default ? `${teacher.name} (default)` : teacher.name));
    }
    newJob.teachersLoaded = true;
  } catch {
    // The service's default teacher still works; the list is a convenience.
  }
}

function openNewJob() {
  showView("new");
  loadTeachers();
}

/** The spec from the form: the advanced JSON, then the class names, teacher and seed over it. */
function specFromForm() {
  const advancedText = $("advanced-spec").value.trim();
  let spec = {};
  if (advancedText) {
    try {
      spec = JSON.parse(advancedText);
    } catch (error) {
      throw new ApiError(0, "invalid_json", `the advanced spec is not valid JSON: ${error.message}`);
    }
    if (typeof spec !== "object" || spec === null || Array.isArray(spec)) {
      throw new ApiError(0, "invalid_spec", "the advanced spec must be a JSON object");
    }
  }
  const names = parseClassNames($("classes").value);
  if (names.length > 0) spec.classes = names;
  if ($("teacher").value) spec.teacher = $("teacher").value;
  const seedText = $("seed").value.trim();
  if (seedText) {
    if (!/^\d+$/.test(seedText)) throw new ApiError(0, "invalid_spec", "the seed is a whole number, 0 or more");
    spec.seed = Number(seedText);
  }
  return spec;
}

async function submitJob(event) {
  event.preventDefault();
  const button = $("submit-job");
  const errorBox = $("new-job-error");
  showError(errorBox, null);
  let spec;
  try {
    spec = specFromForm();
  } catch (error) {
    showError(errorBox, error);
    return;
  }
  // Example images go as multipart (a "spec" field and images[CLASS] files), exactly as POST /v1/jobs reads them.
  const files = [...newJob.exampleInputs].flatMap(([name, { input }]) => [...input.files].map((file) => [name, file]));
  const options = { headers: { "Idempotency-Key": newJob.idempotencyKey } };
  if (files.length > 0) {
    const form = new FormData();
    form.append("spec", JSON.stringify(spec));
    for (const [name, file] of files) form.append(`images[${name}]`, file, file.name);
    options.body = form;
  } else {
    options.json = spec;
  }
  button.disabled = true;
  button.setAttribute("aria-busy", "true");
  try {
    const job = await apiJson("POST", "/v1/jobs", options);
    newJob.idempotencyKey = newIdempotencyKey();
    $("new-job-form").reset();
    renderExampleInputs();
    announce(`Job ${job.id} submitted.`);
    window.location.hash = `#/jobs/${job.id}`;
  } catch (error) {
    // The same key again only when the service may have stored the job without answering (a retry then returns it).
    if (!(error instanceof ApiError) || (error.status !== 0 && error.status < 500)) newJob.idempotencyKey = newIdempotencyKey();
    showError(errorBox, error);
    announce(`The job was not submitted: ${error.code ?? "error"}.`);
  } finally {
    button.disabled = false;
    button.removeAttribute("aria-busy");
  }
}

// -- a job's page ------------------------------------------------------------------------------------------------

/** What the open job page holds; replaced when another job is opened. */
let page = null;

function openJob(jobId) {
  const controller = new AbortController();
  const blobUrls = [];
  const timers = new Set();
  const current = {
    jobId,
    job: null,
    signal: controller.signal,
    blobUrls,
    timers,
    finishedLoaded: false,
    lastRefresh: 0,
    refreshTimer: null,
    eventCount: 0,
    evaluations: new Map(), // id -> {status, article}
    polling: new Set(), // ids of evaluations being followed
  };
  page = current;
  pageCleanups.push(() => {
    controller.abort();
    for (const timer of timers) window.clearTimeout(timer);
    for (const url of blobUrls) URL.revokeObjectURL(url);
    page = null;
  });
  $("job-heading").replaceChildren("Job ", el("code", { id: "job-id" }, jobId));
  // The panels appear once the job has been read: a job that does not exist gets none (and no Cancel or Delete).
  $("job-body").hidden = true;
  $("job-not-found").hidden = true;
  $("job-loading").hidden = false;
  for (const id of ["job-samples-section", "job-card-section", "job-artifacts-section", "try-section", "evaluation-section"]) $(id).hidden = true;
  // The previous job's evaluation inputs go too: a file chosen in a stale input would be lost when this job's are drawn.
  const filled = ["job-error", "job-failure", "job-details", "job-card", "job-artifacts", "job-events", "evaluations", "evaluation-error", "evaluation-inputs", "try-results", "try-error"];
  for (const id of filled) $(id).replaceChildren();
  evaluationInputs.clear();
  $("evaluation-form").reset();
  $("try-form").reset();
  $("job-samples").removeAttribute("src");
  $("job-card-json").textContent = "";
  $("job-events-count").textContent = "0";
  $("evaluations-empty").hidden = false;
  $("job-status").replaceWith(statusBadge("…", "job-status"));
  $("job-stage").textContent = "—";
  $("job-eta").textContent = "—";
  $("stream-state").textContent = "";
  $("cancel-job").disabled = true;
  $("delete-job").disabled = true;
  setProgress(0);
  showView("job");
  loadJob(current).then((job) => job && followJob(current));
}

function setProgress(fraction) {
  $("job-progress").value = fraction;
  $("job-progress").setAttribute("aria-valuetext", percent(fraction));
  $("job-progress-text").textContent = percent(fraction);
}

async function loadJob(current) {
  try {
    const job = await apiJson("GET", `/v1/jobs/${current.jobId}`, { signal: current.signal });
    if (page === current) renderJob(current, job);
    return job;
  } catch (error) {
    if (error.name === "AbortError" || page !== current) return null;
    if (error.code === "job_not_found") showJobNotFound(current);
    else showError($("job-error"), error);
    $("job-loading").hidden = true;
    return null;
  }
}

/** The job does not exist for this sign-in (or no longer: deleted meanwhile): a plain notice, no panels or actions. */
function showJobNotFound(current) {
  showError($("job-error"), null);
  $("job-loading").hidden = true;
  $("job-body").hidden = true;
  $("job-not-found-id").textContent = current.jobId;
  $("job-not-found").hidden = false;
  $("job-heading").replaceChildren("Job not found");
  document.title = "Job not found · clipforge console";
  announce(`Job ${current.jobId} not found.`);
}

/** Re-reads the job soon (for its ETA and timestamps), at most once every JOB_REFRESH_MIN_MS. */
function scheduleJobRefresh(current) {
  if (current.refreshTimer !== null) return;
  const wait = Math.max(0, current.lastRefresh + JOB_REFRESH_MIN_MS - Date.now());
  current.refreshTimer = window.setTimeout(async () => {
    current.timers.delete(current.refreshTimer);
    current.lastRefresh = Date.now();
    await loadJob(current);
    current.refreshTimer = null;
  }, wait);
  current.timers.add(current.refreshTimer);
}

function renderJob(current, job) {
  const previous = current.job;
  current.job = job;
  $("job-loading").hidden = true;
  $("job-body").hidden = false;
  $("job-status").replaceWith(statusBadge(job.status, "job-status"));
  $("job-stage").textContent = job.stage ?? "—";
  setProgress(job.status === "succeeded" ? 1 : job.progress);
  let eta = "—";
  if (job.status === "running") eta = typeof job.eta_seconds === "number" ? formatDuration(job.eta_seconds) : "estimating…";
  else if (job.status === "queued" && typeof job.estimated_seconds === "number") {
    eta = `about ${formatDuration(job.estimated_seconds)} once it starts`;
  }
  $("job-eta").textContent = eta;
  showError($("job-failure"), job.error ? new ApiError(0, job.error.code, job.error.message ?? job.status) : null);
  const cancel = $("cancel-job");
  cancel.disabled = !["queued", "running"].includes(job.status);
  cancel.textContent = job.status === "cancelling" ? "Cancelling…" : "Cancel job";
  $("delete-job").disabled = ["running", "cancelling"].includes(job.status);
  renderJobDetails(job);
  if (!previous || previous.status !== job.status) {
    announce(`Job ${job.status}${job.stage ? `, ${job.stage}` : ""}.`);
  } else if (previous.stage !== job.stage && job.stage) {
    announce(`Stage: ${job.stage}.`);
  }
  if (!ACTIVE.has(job.status)) loadFinishedJob(current, job);
}

/**
 * The budget the job gets. A spec's "auto" is decided by the worker that runs it (by its device: gpu on CUDA, cpu
 * otherwise) and known once the job reports it in metrics.budget; until then the console says so instead of guessing.
 */
function budgetText(job) {
  const asked = job.spec?.budget ?? "auto";
  const got = job.metrics?.budget;
  if (asked !== "auto") return asked;
  if (got) return `${got} (auto: decided by the worker)`;
  return ACTIVE.has(job.status) ? "auto (decided by the worker)" : "auto (not decided: the job did not run to the end)";
}

function renderJobDetails(job) {
  const facts = [
    ["Classes", classNamesOf(job).join(", ")],
    ["Teacher", job.teacher],
    ["Seed", String(job.seed)],
    ["Budget", budgetText(job), "job-budget"],
    ["Estimated duration", typeof job.estimated_seconds === "number" ? formatDuration(job.estimated_seconds) : "—"],
    ["Attempts", String(job.attempts)],
    ["Created", formatTime(job.created_at)],
    ["Started", formatTime(job.started_at)],
    ["Finished", formatTime(job.finished_at)],
  ];
  $("job-details").replaceChildren(...facts.map(([term, value, id]) => el("div", {}, el("dt", {}, term), el("dd", { id }, value))));
}

/** Follows the job's live event stream until its ``end`` event, resuming after a dropped connection (Last-Event-ID). */
async function followJob(current) {
  let lastEventId = null;
  let failures = 0;
  const state = $("stream-state");
  while (!current.signal.aborted) {
    try {
      const headers = { Accept: "text/event-stream" };
      if (lastEventId !== null) headers["Last-Event-ID"] = lastEventId;
      const response = await api("GET", `/v1/jobs/${current.jobId}/events?stream=true`, { headers, signal: current.signal });
      state.textContent = "Live: following the job's events.";
      for await (const message of readServerSentEvents(response.body)) {
        failures = 0;
        if (message.id !== null) lastEventId = message.id;
        if (message.event === "end") {
          state.textContent = "The job has ended; its events are all shown.";
          await loadJob(current);
          return;
        }
        onJobEvent(current, message.event, JSON.parse(message.data));
      }
      // The stream closed without its end event: the connection dropped. Resume below.
    } catch (error) {
      if (current.signal.aborted) return;
      if (error instanceof ApiError && error.status >= 400 && error.status < 500) {
        if (error.code === "job_not_found") showJobNotFound(current); // deleted while open
        else showError($("job-error"), error);
        state.textContent = "";
        return;
      }
    }
    failures += 1;
    const delay = Math.min(STREAM_RETRY_MAX_MS, 500 * 2 ** failures);
    state.textContent = `Connection lost; reconnecting in ${Math.round(delay / 1000)} s.`;
    await sleep(delay, current.signal);
  }
}

function onJobEvent(current, kind, event) {
  if (page !== current) return;
  if (kind === "progress" && typeof event.progress === "number") setProgress(event.progress);
  if (kind === "progress" && typeof event.data?.eta_seconds === "number") $("job-eta").textContent = formatDuration(event.data.eta_seconds);
  if ((kind === "stage" || kind === "progress") && event.stage) $("job-stage").textContent = event.stage;
  if (kind !== "metrics") scheduleJobRefresh(current);
  if (!LOGGED_EVENT_KINDS.has(kind)) return;
  const words = [event.status, event.stage, event.message].filter(Boolean).join(" · ");
  const time = el("time", { datetime: event.created_at }, formatTime(event.created_at));
  const item = el("li", { className: `event-${kind}` }, time, " ", el("strong", {}, kind), " ", words);
  $("job-events").append(item);
  current.eventCount += 1;
  $("job-events-count").textContent = String(current.eventCount);
  if (kind === "warning" || kind === "error") announce(`${kind}: ${event.message ?? ""}`);
}

/**
 * An artifact's URL, always streamed through the API: with presigned downloads on, a plain GET is redirected to the
 * object store, which this page's Content-Security-Policy (connect-src 'self') and the store's CORS would refuse.
 */
function streamed(url) {
  return `${url}?stream=true`;
}

/** A finished job's artifacts: the downloads, the samples grid and the model card; the evaluations of a succeeded one. */
async function loadFinishedJob(current, job) {
  if (current.finishedLoaded) return;
  current.finishedLoaded = true;
  let artifacts = [];
  try {
    artifacts = (await apiJson("GET", `/v1/jobs/${job.id}/artifacts`, { signal: current.signal })).data;
  } catch (error) {
    if (error.name !== "AbortError") showError($("job-error"), error);
    return;
  }
  renderArtifacts(current, artifacts);
  const byName = new Map(artifacts.map((artifact) => [artifact.name, artifact]));
  if (byName.has("samples.png")) {
    showBlobImage(current, streamed(byName.get("samples.png").url), $("job-samples")).then((ok) => {
      $("job-samples-section").hidden = !ok;
    });
  }
  if (byName.has("model_card.json")) loadModelCard(current, streamed(byName.get("model_card.json").url));
  if (job.status === "succeeded") openEvaluations(current, job);
  $("try-section").hidden = !(job.status === "succeeded" && byName.has("student.onnx"));
}

const MAX_TRY_IMAGES = 16;

/** "Try it": the chosen or dropped images through POST /v1/jobs/{id}/predictions, each shown with its top classes. */
async function classifyImages(files) {
  const current = page;
  if (!current) return;
  const errorBox = $("try-error");
  showError(errorBox, null);
  if (files.length === 0 || files.length > MAX_TRY_IMAGES) {
    showError(errorBox, new ApiError(0, "no_images", `choose between 1 and ${MAX_TRY_IMAGES} images`));
    return;
  }
  const form = new FormData();
  for (const file of files) form.append("images", file, file.name);
  const button = $("submit-try");
  button.disabled = true;
  button.setAttribute("aria-busy", "true");
  try {
    const { predictions } = await apiJson("POST", `/v1/jobs/${current.jobId}/predictions?top_k=3`, { body: form, signal: current.signal });
    const items = predictions.map((prediction, index) => {
      const url = URL.createObjectURL(files[index]);
      current.blobUrls.push(url);
      const name = prediction.filename || `image ${index + 1}`;
      // One card a result: the image at a readable size, the answer, a flag beside it (never instead of it) when the
      // student may be seeing none of its classes, and its top classes as bars.
      const bars = prediction.top.map((entry) => {
        const percent = `${(100 * entry.probability).toFixed(1)} %`;
        const fill = el("span", { className: "bar-fill" });
        fill.style.width = `${(100 * entry.probability).toFixed(1)}%`; // through the CSSOM: the page's CSP refuses style attributes
        return el(
          "li",
          { className: "bar-row" },
          el("span", { className: "bar-name", title: entry.name }, entry.name),
          el("span", { className: "bar-value" }, percent),
          el("span", { className: "bar", "aria-hidden": "true" }, fill),
        );
      });
      const flag = prediction.unknown
        ? el(
            "span",
            {
              className: "badge flag",
              title: `score ${prediction.unknown_score?.toFixed(2)} below the job's calibrated threshold ${prediction.unknown_threshold?.toFixed(2)}: the image may be none of its classes`,
            },
            "may be none of these",
          )
        : "";
      return el(
        "li",
        { className: "prediction" },
        el("img", { src: url, alt: name, className: "pixelated" }),
        el(
          "div",
          { className: "prediction-body" },
          el("p", { className: "prediction-file", title: name }, name),
          el("p", { className: "prediction-answer" }, el("strong", { className: "prediction-label" }, prediction.label), " ", flag),
          el("ol", { className: "bars" }, ...bars),
        ),
      );
    });
    $("try-results").replaceChildren(...items);
    announce(`Classified ${predictions.length} image${predictions.length === 1 ? "" : "s"}.`);
  } catch (error) {
    if (error.name !== "AbortError") showError(errorBox, error);
  } finally {
    button.disabled = false;
    button.removeAttribute("aria-busy");
  }
}

/** A list item: the artifact's download button, its size and the start of its sha256. */
function artifactItem(current, artifact) {
  const download = (event) => downloadArtifact(current, artifact, event.currentTarget);
  const sha = artifact.sha256 ?? "";
  return el(
    "li",
    {},
    el("button", { type: "button", onclick: download }, `Download ${artifact.name}`),
    " ",
    el("span", { className: "help" }, `${formatBytes(artifact.size)}, sha256 `, el("code", { title: sha }, sha.slice(0, 12)), "…"),
  );
}

function renderArtifacts(current, artifacts) {
  const items = artifacts.map((artifact) => artifactItem(current, artifact));
  $("job-artifacts").replaceChildren(...items);
  $("job-artifacts-section").hidden = items.length === 0;
}

async function sha256Hex(blob) {
  const digest = await crypto.subtle.digest("SHA-256", await blob.arrayBuffer());
  return Array.from(new Uint8Array(digest), (b) => b.toString(16).padStart(2, "0")).join("");
}

/** Fetches an artifact with the key and saves it through a blob URL (a plain link could not send the key). */
async function downloadArtifact(current, artifact, button) {
  const errorBox = $("job-error");
  showError(errorBox, null);
  button.disabled = true;
  button.setAttribute("aria-busy", "true");
  try {
    const response = await api("GET", streamed(artifact.url), { signal: current.signal });
    const blob = await response.blob();
    // crypto.subtle exists in secure contexts only (https, localhost): elsewhere the check is skipped.
    if (crypto.subtle && artifact.sha256 && (await sha256Hex(blob)) !== artifact.sha256) {
      throw new ApiError(0, "checksum_mismatch", `${artifact.name} arrived with a different sha256 than the service recorded; try again`);
    }
    const url = URL.createObjectURL(blob);
    const link = el("a", { href: url, download: artifact.name, hidden: true });
    document.body.append(link);
    link.click();
    link.remove();
    window.setTimeout(() => URL.revokeObjectURL(url), 60000);
    announce(`Downloaded ${artifact.name}.`);
  } catch (error) {
    if (error.name !== "AbortError") showError(errorBox, error);
  } finally {
    button.disabled = false;
    button.removeAttribute("aria-busy");
  }
}

/** Shows an artifact image (fetched with the key) in ``img``; false when it cannot be loaded. */
async function showBlobImage(current, url, img, errorBox = $("job-error")) {
  try {
    const blob = await (await api("GET", url, { signal: current.signal })).blob();
    const objectUrl = URL.createObjectURL(blob);
    current.blobUrls.push(objectUrl);
    await new Promise((resolve, reject) => {
      img.onload = resolve;
      img.onerror = () => reject(new ApiError(0, "invalid_image", `${url} is not an image the browser can show`));
      img.src = objectUrl;
    });
    return true;
  } catch (error) {
    if (error.name !== "AbortError" && page === current) showError(errorBox, error);
    return false;
  }
}

async function loadModelCard(current, url) {
  let card;
  try {
    card = await (await api("GET", url, { signal: current.signal })).json();
  } catch (error) {
    if (error.name !== "AbortError" && page === current) showError($("job-error"), error);
    return;
  }
  const quality = card.metrics?.quality ?? {};
  const facts = [
    ["Classes", (card.classes ?? []).join(", ")],
    ["Student", `${card.student?.arch ?? "?"}, ${card.student?.image_size ?? "?"} px input`],
    ["Teacher", card.teacher?.name ?? "?"],
    ["Budget", card.spec?.budget ?? "?"],
    ["Agreement with the teacher (held-out synthesized images)", accuracy(quality.agreement_heldout_synthesized)],
    ["Agreement with the teacher (prior samples)", accuracy(quality.agreement_prior_samples)],
    ["Agreement with the teacher (prior samples, class-balanced)", accuracy(quality.agreement_prior_samples_balanced)],
    ["Student parameters", card.metrics?.student_parameters?.toLocaleString() ?? "—"],
    ["Input", card.input ? `${card.input.shape.join(" × ")} (${card.input.layout})` : "—"],
  ];
  $("job-card").replaceChildren(...facts.map(([term, value]) => el("div", {}, el("dt", {}, term), el("dd", {}, value))));
  $("job-card-json").textContent = JSON.stringify(card, null, 2);
  $("job-card-section").hidden = false;
}

async function cancelJob() {
  const current = page;
  if (!current) return;
  try {
    const job = await apiJson("POST", `/v1/jobs/${current.jobId}/cancel`);
    renderJob(current, job);
    announce("Cancellation requested.");
  } catch (error) {
    showError($("job-error"), error);
  }
}

async function deleteJob() {
  const current = page;
  if (!current || !window.confirm(`Delete job ${current.jobId}, its uploads and artifacts? This cannot be undone.`)) return;
  try {
    await api("DELETE", `/v1/jobs/${current.jobId}`);
    announce(`Job ${current.jobId} deleted.`);
    window.location.hash = "#/jobs";
  } catch (error) {
    showError($("job-error"), error);
  }
}

// -- evaluations -------------------------------------------------------------------------------------------------

const evaluationInputs = new Map(); // class name -> its file input, for the open job
// The evaluation's images: [artifact, alt text, caption].
const EVALUATION_FIGURES = [
  ["confusion.png", "Confusion matrices", "Confusion matrices of the student and the teacher: rows true classes, columns predictions."],
  ["mistakes.png", "The student's mistakes", "Images the student got wrong, each with its true and its predicted class."],
];

async function openEvaluations(current, job) {
  evaluationInputs.clear();
  const fields = classNamesOf(job).map((name, index) => {
    const id = `evaluation-images-${index}`;
    const input = el("input", { id, type: "file", accept: "image/*", multiple: true });
    evaluationInputs.set(name, input);
    return el("div", { className: "field" }, el("label", { for: id }, `Images of ${name}`), input);
  });
  $("evaluation-inputs").replaceChildren(...fields);
  $("evaluation-form").reset();
  $("evaluation-section").hidden = false;
  try {
    const { data } = await apiJson("GET", `/v1/jobs/${job.id}/evaluations`, { signal: current.signal });
    for (const evaluation of [...data].reverse()) showEvaluation(current, evaluation); // newest first: each goes on top
  } catch (error) {
    if (error.name === "AbortError" || page !== current) return;
    showError($("evaluation-error"), error);
  }
}

async function submitEvaluation(event) {
  event.preventDefault();
  const current = page;
  if (!current) return;
  const errorBox = $("evaluation-error");
  showError(errorBox, null);
  const archive = $("evaluation-archive").files[0];
  const images = [...evaluationInputs].flatMap(([name, input]) => [...input.files].map((file) => [name, file]));
  if (archive && images.length > 0) {
    showError(errorBox, new ApiError(0, "choose_one", "send either images per class or one zip archive, not both"));
    return;
  }
  if (!archive && images.length === 0) {
    showError(errorBox, new ApiError(0, "no_images", "choose images for at least one class, or a zip archive"));
    return;
  }
  const form = new FormData();
  if (archive) form.append("archive", archive, archive.name);
  for (const [name, file] of images) form.append(`images[${name}]`, file, file.name);
  const button = $("submit-evaluation");
  button.disabled = true;
  button.setAttribute("aria-busy", "true");
  try {
    const evaluation = await apiJson("POST", `/v1/jobs/${current.jobId}/evaluations`, { body: form, signal: current.signal });
    $("evaluation-form").reset();
    announce("Evaluation submitted.");
    showEvaluation(current, evaluation);
  } catch (error) {
    if (error.name !== "AbortError") showError(errorBox, error);
  } finally {
    button.disabled = false;
    button.removeAttribute("aria-busy");
  }
}

/** Shows an evaluation, or redraws it when its status changed; follows it while it is queued or running. */
function showEvaluation(current, evaluation) {
  if (page !== current) return;
  const known = current.evaluations.get(evaluation.id);
  if (!known || known.status !== evaluation.status) {
    const article = renderEvaluation(current, evaluation);
    if (known) known.article.replaceWith(article);
    else $("evaluations").prepend(article);
    current.evaluations.set(evaluation.id, { status: evaluation.status, article });
    $("evaluations-empty").hidden = true;
    if (known) {
      const result = evaluation.result;
      const scores = result ? `: student ${accuracy(result.student?.accuracy)}, teacher ${accuracy(result.teacher?.accuracy)}` : "";
      announce(`Evaluation ${evaluation.status}${scores}.`);
    }
  }
  if (EVALUATION_ACTIVE.has(evaluation.status) && !current.polling.has(evaluation.id)) pollEvaluation(current, evaluation.id);
}

/** Re-reads an evaluation every EVALUATION_POLL_MS until it ends (backing off while the service cannot answer). */
function pollEvaluation(current, evaluationId, failures = 0) {
  current.polling.add(evaluationId);
  const timer = window.setTimeout(async () => {
    current.timers.delete(timer);
    try {
      const fresh = await apiJson("GET", `/v1/jobs/${current.jobId}/evaluations/${evaluationId}`, { signal: current.signal });
      current.polling.delete(evaluationId);
      showEvaluation(current, fresh);
    } catch (error) {
      if (error.name === "AbortError" || page !== current) return;
      showError($("evaluation-error"), error);
      if (error.status === 0 || error.status >= 500) pollEvaluation(current, evaluationId, failures + 1);
      else current.polling.delete(evaluationId);
    }
  }, EVALUATION_POLL_MS * 2 ** Math.min(failures, 4));
  current.timers.add(timer);
}

function renderEvaluation(current, evaluation) {
  const counts = evaluation.counts ?? {};
  const total = Object.values(counts).reduce((sum, n) => sum + n, 0);
  const headingId = `heading-${evaluation.id}`;
  const article = el(
    "article",
    { className: "evaluation", "aria-labelledby": headingId },
    el("h4", { id: headingId }, "Evaluation ", el("code", {}, evaluation.id), " ", statusBadge(evaluation.status)),
    el("p", { className: "help" }, `${total} images, submitted ${formatTime(evaluation.created_at)}`),
  );
  if (evaluation.error) {
    const { code, message } = evaluation.error;
    article.append(el("div", { className: "error" }, el("p", {}, el("code", {}, code), ": ", message ?? "")));
  }
  const result = evaluation.result;
  if (evaluation.status !== "succeeded" || !result) return article;
  const classes = [...new Set([...(current.job ? classNamesOf(current.job) : []), ...Object.keys(counts)])].filter(
    (name) => name in counts || name in (result.student?.per_class ?? {}),
  );
  const rows = classes.map((name) =>
    el(
      "tr",
      {},
      el("th", { scope: "row" }, name),
      el("td", {}, String(counts[name] ?? "—")),
      el("td", {}, accuracy(result.student?.per_class?.[name])),
      el("td", {}, accuracy(result.teacher?.per_class?.[name])),
    ),
  );
  const overall = el(
    "tr",
    { className: "overall" },
    el("th", { scope: "row" }, "All classes"),
    el("td", {}, String(result.images ?? total)),
    el("td", {}, accuracy(result.student?.accuracy)),
    el("td", {}, accuracy(result.teacher?.accuracy)),
  );
  const header = el("tr", {}, ["Class", "Images", "Student", "Teacher"].map((title) => el("th", { scope: "col" }, title)));
  const table = el(
    "table",
    { className: "accuracy" },
    el("caption", {}, "Accuracy of the student and its teacher"),
    el("thead", {}, header),
    el("tbody", {}, rows),
    el("tfoot", {}, overall),
  );
  article.append(el("div", { className: "table-scroll" }, table));
  const artifacts = new Map((evaluation.artifacts ?? []).map((artifact) => [artifact.name, artifact]));
  const figures = el("div", { className: "figures" });
  for (const [name, alt, caption] of EVALUATION_FIGURES) {
    if (!artifacts.has(name)) continue;
    const img = el("img", { alt, className: `evaluation-${name.replace(".png", "")}` });
    figures.append(el("figure", {}, img, el("figcaption", {}, caption)));
    showBlobImage(current, streamed(artifacts.get(name).url), img);
  }
  article.append(figures);
  if (artifacts.size > 0) {
    article.append(el("ul", { className: "artifacts" }, [...artifacts.values()].map((artifact) => artifactItem(current, artifact))));
  }
  return article;
}

// -- start -------------------------------------------------------------------------------------------------------

function wire() {
  // The skip link moves focus itself: following it would change the hash, which is the console's route.
  document.querySelector(".skip-link").addEventListener("click", (event) => {
    event.preventDefault();
    $("main").focus();
  });
  $("sign-in-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const key = $("api-key").value.trim();
    if (!key) {
      showError($("sign-in-error"), new ApiError(0, "missing_api_key", "type an API key, or continue in open mode"));
      return;
    }
    if (await signIn(key)) route();
  });
  $("open-mode").addEventListener("click", async () => {
    if (await signIn(null)) route();
  });
  $("sign-out").addEventListener("click", () => signOut());
  $("status-filter").addEventListener("change", () => loadJobs());
  $("refresh-jobs").addEventListener("click", () => loadJobs());
  $("more-jobs").addEventListener("click", () => loadJobs({ more: true }));
  $("classes").addEventListener("input", renderExampleInputs);
  $("new-job-form").addEventListener("submit", submitJob);
  $("pool-form").addEventListener("submit", createPool);
  $("cancel-job").addEventListener("click", cancelJob);
  $("delete-job").addEventListener("click", deleteJob);
  $("evaluation-form").addEventListener("submit", submitEvaluation);
  $("try-form").addEventListener("submit", (event) => {
    event.preventDefault();
    classifyImages([...$("try-images").files]);
  });
  const drop = $("try-drop");
  drop.addEventListener("dragover", (event) => {
    event.preventDefault();
    drop.classList.add("dragging");
  });
  drop.addEventListener("dragleave", () => drop.classList.remove("dragging"));
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    drop.classList.remove("dragging");
    classifyImages([...event.dataTransfer.files].filter((file) => file.type.startsWith("image/")));
  });
  window.addEventListener("hashchange", route);
}

async function start() {
  wire();
  const storedKey = sessionStorage.getItem(KEY_STORAGE);
  if (storedKey || sessionStorage.getItem(MODE_STORAGE) === "open") await signIn(storedKey);
  route();
}

start();
