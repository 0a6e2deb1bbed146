// DuckMesh console: plain JavaScript against the documented HTTP API
// (GET /v1/ui/schema, GET /v1/snapshots, POST /v1/query). The API key stays
// in sessionStorage: gone when the tab closes, never sent anywhere else.
"use strict";

const KEY_STORAGE = "duckmesh.apiKey";
const SNAPSHOT_PAGE = 50;
const $ = (id) => document.getElementById(id);

function apiKey() {
  return sessionStorage.getItem(KEY_STORAGE) || "";
}

class ApiError extends Error {
  constructor(status, body) {
    super(body.message || `HTTP ${status}`);
    this.status = status;
    this.body = body;
  }
}

async function call(method, path, body, accept) {
  const headers = { Authorization: `Bearer ${apiKey()}`, Accept: accept || "application/json" };
  const init = { method, headers };
  if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const response = await fetch(path, init);
  if (!response.ok) {
    let error;
    try {
      error = await response.json();
    } catch (_) {
      error = { error_code: `HTTP_${response.status}`, message: response.statusText };
    }
    throw new ApiError(response.status, error);
  }
  return response;
}

function element(tag, text, className) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (className) node.className = className;
  return node;
}

function formatBytes(n) {
  const units = ["B", "kB", "MB", "GB", "TB"];
  let value = Number(n);
  let unit = 0;
  while (value >= 1000 && unit < units.length - 1) {
    value /= 1000;
    unit += 1;
  }
  return `${unit ? value.toFixed(1) : value} ${units[unit]}`;
}

// --- errors ---------------------------------------------------------------------

function showError(error) {
  const body = error instanceof ApiError ? error.body : { error_code: "NETWORK", message: String(error) };
  $("error-code").textContent = body.error_code || "ERROR";
  $("error-message").textContent = body.message || "";
  const detail = [];
  if (body.retryable) detail.push("retryable: yes");
  if (body.context && Object.keys(body.context).length) {
    detail.push(`context: ${JSON.stringify(body.context, null, 1)}`);
  }
  if (body.trace_id) detail.push(`trace id: ${body.trace_id}`);
  $("error-detail").textContent = detail.join("\n");
  $("error").hidden = false;
}

function clearError() {
  $("error").hidden = true;
}

// --- key and schema ---------------------------------------------------------------

async function connect() {
  clearError();
  try {
    const schema = await (await call("GET", "/v1/ui/schema")).json();
    renderSchema(schema);
    $("connection").textContent = `connected · latest snapshot ${schema.snapshot_id ?? "none yet"}`;
    $("forget").hidden = false;
    await loadSnapshots();
  } catch (error) {
    $("connection").textContent = "not connected";
    showError(error);
  }
}

function renderSchema(schema) {
  const list = $("tables");
  list.replaceChildren();
  $("schema-note").textContent = schema.tables.length ? "" : "No tables yet.";
  for (const table of schema.tables) {
    const item = element("li");
    const name = element("button", table.name, "table");
    name.type = "button";
    name.title = "query this table";
    name.addEventListener("click", () => {
      $("sql").value = `SELECT * FROM ${table.name} LIMIT 100`;
      $("sql").focus();
    });
    item.append(name);
    const rows = table.row_count ?? table.stored_records;
    const rowsText = table.row_count === null ? `≤ ${rows} rows` : `${rows} rows`;
    item.append(element("div", `${rowsText} · ${formatBytes(table.size_bytes)}`, "stats muted"));
    const columns = element("ul");
    for (const column of table.columns) {
      const line = element("li", `${column.name} `);
      line.append(element("span", column.type, "type"));
      if (table.primary_key.includes(column.name)) line.append(element("span", " key", "key"));
      columns.append(line);
    }
    item.append(columns);
    list.append(item);
  }
}

async function loadSnapshots() {
  const page = await (await call("GET", `/v1/snapshots?limit=${SNAPSHOT_PAGE}`)).json();
  const select = $("snapshot");
  const chosen = select.value;
  select.replaceChildren(element("option", "latest"));
  select.firstChild.value = "";
  for (const snap of page.snapshots) {
    if (snap.expired) continue;
    const option = element("option", `#${snap.snapshot_id} · ${snap.created_at} · token ${snap.max_visibility_token}`);
    option.value = String(snap.snapshot_id);
    select.append(option);
  }
  select.value = chosen;
  if (select.value !== chosen) select.value = "";
}

// --- queries ----------------------------------------------------------------------

function queryBody() {
  const body = { sql: $("sql").value };
  const snapshot = $("snapshot").value;
  if (snapshot) body.snapshot_id = Number(snapshot);
  return body;
}

function busy(on) {
  for (const id of ["run", "download-csv", "download-parquet"]) $(id).disabled = on;
}

async function runQuery() {
  clearError();
  busy(true);
  $("meta").textContent = "running…";
  const started = performance.now();
  try {
    const result = await (await call("POST", "/v1/query", queryBody())).json();
    renderResult(result, performance.now() - started);
  } catch (error) {
    $("meta").textContent = "";
    $("grid").tHead.replaceChildren();
    $("grid").tBodies[0].replaceChildren();
    showError(error);
  } finally {
    busy(false);
  }
}

function renderMeta(result, roundTripMs) {
  const meta = $("meta");
  meta.replaceChildren();
  const parts = [
    `${result.rows.length} row${result.rows.length === 1 ? "" : "s"}${result.truncated ? " (truncated)" : ""}`,
    `snapshot ${result.snapshot_id ?? "none"}`,
    `watermark ${result.max_visibility_token}`,
    `${result.stats.execution_ms.toFixed(1)} ms execution · ${roundTripMs.toFixed(0)} ms round trip`,
    `${formatBytes(result.stats.scanned_bytes)} scanned in ${result.stats.scanned_files} file(s)`,
  ];
  const ids = ["meta-rows", "meta-snapshot", "meta-watermark", "meta-timing", "meta-scanned"];
  parts.forEach((text, n) => {
    const span = element("span", text);
    span.id = ids[n];
    meta.append(span);
  });
}

function renderResult(result, roundTripMs) {
  renderMeta(result, roundTripMs);
  const head = $("grid").tHead;
  const body = $("grid").tBodies[0];
  const header = element("tr");
  for (const column of result.columns) {
    const th = element("th", column.name);
    th.append(element("span", column.type, "type"));
    header.append(th);
  }
  head.replaceChildren(header);
  const numeric = result.columns.map((c) => /INT|DOUBLE|FLOAT|DECIMAL|REAL|NUMERIC/i.test(c.type));
  const fragment = document.createDocumentFragment();
  for (const row of result.rows) {
    const tr = element("tr");
    row.forEach((value, n) => {
      if (value === null) {
        tr.append(element("td", "NULL", "null"));
      } else {
        const text = typeof value === "object" ? JSON.stringify(value) : value;
        tr.append(element("td", text, numeric[n] ? "number" : ""));
      }
    });
    fragment.append(tr);
  }
  body.replaceChildren(fragment);
}

async function download(accept, extension) {
  clearError();
  busy(true);
  try {
    const response = await call("POST", "/v1/query", queryBody(), accept);
    const blob = await response.blob();
    const snapshot = response.headers.get("DuckMesh-Snapshot-Id") || "none";
    const link = element("a");
    link.href = URL.createObjectURL(blob);
    link.download = `duckmesh-snapshot-${snapshot}.${extension}`;
    document.body.append(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(link.href), 10000);
  } catch (error) {
    showError(error);
  } finally {
    busy(false);
  }
}

// --- wiring -----------------------------------------------------------------------

function init() {
  $("key-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const key = $("api-key").value.trim();
    if (key) sessionStorage.setItem(KEY_STORAGE, key);
    $("api-key").value = "";
    connect();
  });
  $("forget").addEventListener("click", () => {
    sessionStorage.removeItem(KEY_STORAGE);
    $("tables").replaceChildren();
    $("schema-note").textContent = "Paste a key to see the tables.";
    $("connection").textContent = "not connected";
    $("forget").hidden = true;
  });
  $("run").addEventListener("click", runQuery);
  $("download-csv").addEventListener("click", () => download("text/csv", "csv"));
  $("download-parquet").addEventListener("click", () =>
    download("application/vnd.apache.parquet", "parquet"),
  );
  $("sql").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) {
      event.preventDefault();
      runQuery();
    }
  });
  if (apiKey()) connect();
}

document.addEventListener("DOMContentLoaded", init);
