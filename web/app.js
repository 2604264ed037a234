// recsync web UI: plain ES module, no build step. Data is always inserted as text (never as
// HTML). The API key lives in sessionStorage for this tab only.

const KEY = "recsync.key";
const main = document.getElementById("main");
let me = null; // { name, read, write, operate }

// ---- small helpers -------------------------------------------------------------------------

function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "class") el.className = v;
    else el.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat(Infinity)) {
    if (c === undefined || c === null || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

function time(iso) {
  if (!iso) return h("span", { class: "muted" }, "—");
  const d = new Date(iso);
  const utc = d.toISOString().replace(".000Z", "Z");
  return h("time", { datetime: iso, title: `UTC: ${utc}` }, d.toLocaleString());
}

// "95 s", "4 min", "3 h" for a number of seconds.
function seconds(n) {
  if (n < 120) return `${Math.round(n)} s`;
  if (n < 7200) return `${Math.round(n / 60)} min`;
  return `${Math.round(n / 3600)} h`;
}

function status(s) {
  const label = s === "conflict_resolved" ? "conflict resolved" : s;
  return h("span", { class: `status-${s}` }, label || "—");
}

function loading(what) {
  return h("p", { class: "loading", role: "status" }, `Loading ${what}…`);
}

function errorBox(err) {
  return h("div", { class: "error", role: "alert" }, err.message || String(err));
}

function empty(text) {
  return h("div", { class: "empty" }, text);
}

function show(...nodes) {
  main.replaceChildren(...nodes.flat().filter((n) => n !== null && n !== undefined && n !== false));
}

class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

async function api(path, opts = {}) {
  const key = sessionStorage.getItem(KEY);
  let res;
  try {
    res = await fetch(path, {
      ...opts,
      headers: { "X-Api-Key": key || "", Accept: "application/json", ...(opts.headers || {}) },
    });
  } catch (e) {
    throw new ApiError(0, `recsync did not answer (${e.message}). Is the service running?`);
  }
  let body = null;
  const text = await res.text();
  try {
    body = text ? JSON.parse(text) : null;
  } catch {
    body = null;
  }
  if (!res.ok) {
    if (res.status === 401) {
      sessionStorage.removeItem(KEY);
      me = null;
      route();
    }
    const msg = body && body.message ? body.message : `${res.status} ${res.statusText}`;
    throw new ApiError(res.status, msg);
  }
  return body;
}

function query(params) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v !== undefined && v !== null && v !== "") q.set(k, v);
  const s = q.toString();
  return s ? `?${s}` : "";
}

function hashParams() {
  const i = location.hash.indexOf("?");
  return new URLSearchParams(i >= 0 ? location.hash.slice(i + 1) : "");
}

// ---- key entry -----------------------------------------------------------------------------

function keyForm(message) {
  document.getElementById("nav").hidden = true;
  document.getElementById("signout").hidden = true;
  document.getElementById("who").textContent = "";
  const input = h("input", { type: "password", name: "key", id: "key", autocomplete: "off", required: true });
  const form = h(
    "form",
    { class: "key", "aria-labelledby": "key-title" },
    h("h1", { id: "key-title" }, "Sign in"),
    h("p", { class: "muted" }, "Enter an API key. It is kept for this browser tab only."),
    message ? h("div", { class: "error", role: "alert" }, message) : null,
    h("label", { for: "key" }, "API key", input),
    h("button", { type: "submit" }, "Continue"),
  );
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    sessionStorage.setItem(KEY, input.value.trim());
    await signIn();
  });
  show(form);
  input.focus();
}

async function signIn() {
  try {
    me = await api("/api/v1/whoami");
  } catch (e) {
    sessionStorage.removeItem(KEY);
    keyForm(e.status === 401 ? "That key was not accepted." : e.message);
    return;
  }
  document.getElementById("nav").hidden = false;
  document.getElementById("signout").hidden = false;
  document.getElementById("who").textContent = `key: ${me.name}${me.operate ? "" : " (read only)"}`;
  route();
}

document.getElementById("signout").addEventListener("click", () => {
  sessionStorage.removeItem(KEY);
  me = null;
  keyForm();
});

// ---- pages ---------------------------------------------------------------------------------

function chart(hours, sync) {
  // 24 hourly bars: changes (light) with failures (red) drawn over them.
  const now = new Date();
  const slots = [];
  for (let i = 23; i >= 0; i--) {
    const d = new Date(now.getTime() - i * 3600e3);
    slots.push(d.toISOString().slice(0, 13));
  }
  const by = new Map(hours.filter((x) => x.sync === sync).map((x) => [x.hour.slice(0, 13), x]));
  const max = Math.max(1, ...slots.map((s) => (by.get(s) || { changes: 0 }).changes));
  const ns = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("class", "chart");
  svg.setAttribute("viewBox", "0 0 240 48");
  svg.setAttribute("preserveAspectRatio", "none");
  svg.setAttribute("role", "img");
  let total = 0, failed = 0, unresolved = 0;
  slots.forEach((s, i) => {
    const v = by.get(s) || { changes: 0, failed: 0, unresolved: 0 };
    total += v.changes;
    failed += v.failed;
    unresolved += v.unresolved ?? v.failed;
    for (const [cls, n] of [["c", v.changes], ["f", v.failed]]) {
      if (!n) continue;
      const r = document.createElementNS(ns, "rect");
      const hgt = Math.max(1.5, (n / max) * 46);
      r.setAttribute("class", cls);
      r.setAttribute("x", i * 10 + 1);
      r.setAttribute("y", 48 - hgt);
      r.setAttribute("width", 8);
      r.setAttribute("height", hgt);
      const t = document.createElementNS(ns, "title");
      t.textContent = `${s}:00 UTC: ${cls === "c" ? `${n} changes` : `${n} failed`}`;
      r.append(t);
      svg.append(r);
    }
  });
  svg.setAttribute("aria-label", `Last 24 hours: ${total} changes, ${failed} failed attempts, ${unresolved} not made good since`);
  return { svg, total, failed, unresolved };
}

async function dashboard() {
  show(h("h1", {}, "Syncs"), loading("the syncs"));
  let syncs, stats, runs, ready;
  try {
    [syncs, stats, runs, ready] = await Promise.all([
      api("/api/v1/syncs"),
      api("/api/v1/changes/stats?hours=24"),
      api("/api/v1/runs?limit=10"),
      // The readiness answer says whether the mapping files on disk are valid (it answers 503
      // with the same body when not ready).
      fetch("/readyz").then((r) => r.json()).catch(() => null),
    ]);
  } catch (e) {
    show(h("h1", {}, "Syncs"), errorBox(e));
    return;
  }
  if (!syncs.syncs.length) {
    show(h("h1", {}, "Syncs"), empty("No sync is configured. Add a [syncs.CODE] table to a file in the mappings folder; recsync picks it up without a restart."));
    return;
  }
  const since = new Date(Date.now() - 24 * 3600e3).toISOString();
  const cards = syncs.syncs.map((s) => {
    const c = chart(stats.hours, s.code);
    const last = s.last_run;
    const msg = h("span", { class: "muted", role: "status" });
    const run = me.operate
      ? h("button", {
          type: "button",
          class: "secondary",
          "data-run": s.code,
          onclick: async (ev) => {
            ev.target.disabled = true;
            msg.textContent = "Starting…";
            try {
              const r = await api(`/api/v1/syncs/${encodeURIComponent(s.code)}/run`, { method: "POST" });
              msg.textContent = `Run ${r.run_id} started.`;
              setTimeout(dashboard, 1200);
            } catch (e) {
              msg.textContent = e.message;
              ev.target.disabled = false;
            }
          },
        }, "Run now")
      : null;
    return h(
      "section",
      { class: "card", "aria-labelledby": `sync-${s.code}`, "data-sync": s.code },
      h("h2", { id: `sync-${s.code}` }, s.code, " ", h("span", { class: "muted" }, s.name !== s.code ? s.name : "")),
      h("div", { class: "muted" }, `${s.model} ⇄ ${s.external_model} via ${s.web_service}`),
      h("dl", {},
        h("dt", {}, "Direction"), h("dd", {}, directionLabel(s.direction)),
        h("dt", {}, "Mode"), h("dd", {}, s.mode, s.schedule ? ` (${s.schedule})` : ""),
        h("dt", {}, "Last run"), h("dd", {}, last ? [time(last.started_at), " ", status(last.status)] : h("span", { class: "muted" }, "never")),
        h("dt", {}, "Next run"), h("dd", {}, time(s.next_run_at),
          s.overdue_seconds ? [" ", h("span", { class: "badge status-failed", "data-overdue": s.code }, `overdue by ${seconds(s.overdue_seconds)}`)] : ""),
        h("dt", {}, "Outbox"), h("dd", {}, `${s.outbox_depth} waiting`),
        h("dt", {}, "Last 24 h"),
        h("dd", {},
          h("a", { href: `#/changes${query({ sync: s.code, since })}` }, `${c.total} changes`), ", ",
          // Failures not made good by a later success; attempts that a retry then made good
          // are counted apart.
          h("a", { href: `#/changes${query({ sync: s.code, status: "failed", since })}`, class: c.unresolved ? "status-failed" : "", "data-failed": s.code }, `${c.unresolved} failed`),
          c.failed > c.unresolved ? h("span", { class: "muted", "data-retried": s.code }, ` (${c.failed - c.unresolved} more retried since)`) : ""),
      ),
      c.svg,
      h("div", { class: "legend" }, "changes and failures per hour, last 24 h"),
      h("div", { class: "actions" }, run,
        h("a", { class: "button secondary", href: `#/plan${query({ sync: s.code })}`, "data-plan": s.code }, "Plan"), msg),
    );
  });
  const runRows = runs.runs.map((r) =>
    h("tr", {},
      h("td", { class: "num" }, r.id), h("td", {}, r.sync), h("td", {}, r.trigger), h("td", {}, time(r.started_at)),
      h("td", {}, status(r.status),
        // A run that wrote nothing on either side says so, rather than a bare "success".
        r.finished_at && r.status === "success" && !(r.created + r.updated + r.deleted + r.pushed + r.failed + r.held)
          ? h("span", { class: "muted", "data-noop": r.id }, r.pulled ? ` nothing changed (${r.pulled} read)` : " nothing to do")
          : ""),
      h("td", { class: "num" }, r.pulled), h("td", { class: "num" }, r.created + r.updated + r.deleted),
      h("td", { class: "num" }, r.pushed), h("td", { class: "num" }, r.failed), h("td", { class: "wrap" }, r.error || "")));
  const overdue = syncs.syncs.filter((s) => s.overdue_seconds);
  const rejected = ready && ready.config && ready.config.valid === false;
  show(
    h("h1", {}, "Syncs"),
    rejected
      ? h("div", { class: "error", role: "alert", id: "config-rejected" },
          `The last edit of the mapping files was rejected (${ready.config.errors} error${ready.config.errors === 1 ? "" : "s"}); the syncs below run on the last valid configuration. `,
          h("a", { href: "#/config" }, "See the errors"), ".")
      : "",
    overdue.length
      ? h("div", { class: "error", role: "alert", id: "overdue" },
          `Overdue: ${overdue.map((s) => `${s.code} (by ${seconds(s.overdue_seconds)})`).join(", ")}. `,
          "A scheduled run should have started and did not: the scheduler is stalled or every instance is down. /readyz answers 503 until it catches up; check the server's log for ERROR lines from the scheduler.")
      : "",
    h("div", { class: "cards" }, cards),
    h("h2", {}, "Recent runs"),
    runRows.length
      ? h("table", { id: "runs" },
          h("thead", {}, h("tr", {}, ["Run", "Sync", "Trigger", "Started", "Status", "Pulled", "Applied", "Pushed", "Failed", "Error"].map((t) => h("th", { scope: "col" }, t)))),
          h("tbody", {}, runRows))
      : empty("No run yet. Runs start on each sync's schedule, or with “Run now”."),
  );
}

const FILTERS = ["sync", "direction", "action", "status", "external_id", "local_id", "since", "until", "q"];

function toLocalInput(iso) {
  if (!iso) return "";
  const d = new Date(iso);
  const pad = (n) => String(n).padStart(2, "0");
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())}T${pad(d.getHours())}:${pad(d.getMinutes())}`;
}

function select(name, label, values, current) {
  return h("label", {}, label,
    h("select", { name }, h("option", { value: "" }, "any"),
      values.map((v) => h("option", { value: v, selected: v === current }, v))));
}

async function changes() {
  const p = hashParams();
  const cur = Object.fromEntries(FILTERS.map((f) => [f, p.get(f) || ""]));
  let syncCodes = [];
  try {
    syncCodes = (await api("/api/v1/syncs")).syncs.map((s) => s.code);
  } catch { /* the filter still works as free text below */ }
  const form = h("form", { class: "filters", role: "search", "aria-label": "Filter the change log" },
    select("sync", "Sync", syncCodes, cur.sync),
    select("direction", "Direction", ["external_to_local", "local_to_external"], cur.direction),
    select("action", "Action", ["create", "update", "delete", "unlink", "rename", "move", "conflict", "link", "detach", "run", "reconcile"], cur.action),
    select("status", "Status", ["success", "failed", "conflict_resolved", "skipped"], cur.status),
    h("label", {}, "External id", h("input", { name: "external_id", value: cur.external_id })),
    h("label", {}, "Local id", h("input", { name: "local_id", inputmode: "numeric", value: cur.local_id })),
    h("label", {}, "Since (your time)", h("input", { name: "since", type: "datetime-local", value: toLocalInput(cur.since) })),
    h("label", {}, "Until (your time)", h("input", { name: "until", type: "datetime-local", value: toLocalInput(cur.until) })),
    h("label", {}, "Search title and error", h("input", { name: "q", type: "search", value: cur.q })),
    h("div", { class: "buttons" },
      h("button", { type: "submit" }, "Filter"),
      h("button", { type: "button", class: "secondary", onclick: () => { location.hash = "#/changes"; } }, "Clear")),
  );
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    const data = new FormData(form);
    const out = {};
    for (const f of FILTERS) {
      let v = (data.get(f) || "").trim();
      if ((f === "since" || f === "until") && v) v = new Date(v).toISOString();
      out[f] = v;
    }
    location.hash = `#/changes${query(out)}`;
  });
  const body = h("tbody");
  const table = h("table", { id: "changes" },
    h("caption", { class: "muted" }, "Newest first. Select a row to see its values."),
    h("thead", {}, h("tr", {}, ["When", "Sync", "Direction", "Action", "Status", "Record", "Title or error"].map((t) => h("th", { scope: "col" }, t)))),
    body);
  const more = h("button", { type: "button", class: "secondary", hidden: true }, "Load more");
  const state = h("div");
  show(h("h1", {}, "Change log"), form, state, table, h("p", {}, more));
  let next = null;
  const load = async () => {
    state.replaceChildren(loading("changes"));
    more.disabled = true;
    try {
      const r = await api(`/api/v1/changes${query({ ...cur, after: next, limit: 50 })}`);
      state.replaceChildren();
      for (const c of r.changes) {
        const open = () => { location.hash = `#/change/${c.id}`; };
        body.append(h("tr", {
          class: "row-link", tabindex: 0, "data-id": c.id, "data-status": c.status,
          onclick: open, onkeydown: (ev) => { if (ev.key === "Enter" || ev.key === " ") { ev.preventDefault(); open(); } },
        },
          h("td", {}, time(c.synced_at)), h("td", {}, c.sync),
          h("td", {}, c.direction === "external_to_local" ? "← in" : "→ out"),
          h("td", {}, c.action), h("td", {}, status(c.status)),
          h("td", {}, c.external_id || (c.local_id ? `#${c.local_id}` : "")),
          h("td", { class: "wrap" }, c.error_message || c.title)));
      }
      if (!body.children.length) {
        state.replaceChildren(empty(FILTERS.some((f) => cur[f])
          ? "No change matches these filters. Clear some of them to see more."
          : "The change log is empty. Changes appear here as soon as a sync applies or sends one."));
      }
      next = r.next;
      more.hidden = !next;
    } catch (e) {
      state.replaceChildren(errorBox(e));
    }
    more.disabled = false;
  };
  more.addEventListener("click", load);
  await load();
}

// Reads `name` (a field name or a `$.a.b` path) from a values object.
function pick(values, name) {
  if (name in values) return values[name];
  if (!name.startsWith("$.")) return undefined;
  let v = values;
  for (const part of name.slice(2).split(".")) {
    if (v === null || typeof v !== "object" || !(part in v)) return undefined;
    v = v[part];
  }
  return v;
}

let configCache = null;

// Origin against destination, field pair by field pair of the row's sync (local and external
// names side by side), then any other keys. Null when the sync is unknown.
async function pairedDiff(c, o, d) {
  try {
    configCache = configCache || (await api("/api/v1/config"));
  } catch {
    return null;
  }
  const sync = configCache.syncs.find((s) => s.code === c.sync);
  if (!sync) return null;
  const inbound = c.direction === "external_to_local";
  // What went out through the shipping protocol is the whole request
  // ({action, external_id, values}); its `values` are the external fields.
  if (!inbound && d && typeof d.values === "object" && d.values !== null && "action" in d) {
    d = d.values;
  }
  const used = new Set();
  // Only the pairs that carry values this way.
  const carried = sync.fields.filter((f) => f.direction === "bidirectional" || f.direction === (inbound ? "to_local" : "to_external"));
  const rows = carried.map((f) => {
    const [from, to] = inbound ? [f.external, f.local] : [f.local, f.external];
    const expr = inbound ? f.to_local : f.to_external;
    const label = `${f.local || "(computed)"} ${arrow(f.direction)} ${f.external}`;
    used.add(to.replace(/^\$\.([^.]+).*/, "$1"));
    if (expr) {
      // A transform: what it read, and what it made.
      const reads = (inbound ? f.reads_external : f.reads_local) || [];
      reads.forEach((k) => used.add(k));
      const read = reads.filter((k) => o && k in o);
      const ov = read.length === 1 ? o[read[0]] : read.length ? Object.fromEntries(read.map((k) => [k, o[k]])) : undefined;
      return { label: `${label} (${inbound ? "to_local" : "to_external"} ${expr})`, ov, dv: to ? pick(d, to) : undefined, transformed: true, local: f.local };
    }
    used.add(from.replace(/^\$\.([^.]+).*/, "$1"));
    const ov = pick(o, from), dv = pick(d, to);
    if (f.map) {
      // A value table: the two sides differ by design (`customer` here is `C` there); marked
      // only when the destination is not what the table makes of the origin.
      const same = (a, b) => JSON.stringify(a) === JSON.stringify(b) || String(a) === String(b);
      const hit = f.map.find(([l, e]) => same(inbound ? e : l, ov));
      const expected = hit ? (inbound ? hit[0] : hit[1]) : ov;
      return { label: `${label} (value table)`, ov, dv, changed: !same(expected, dv), local: f.local };
    }
    if (f.reference) {
      // A reference: an external id on one side, a local id on the other.
      return { label: `${label} (reference by ${f.reference})`, ov, dv, changed: (ov == null) !== (dv == null), local: f.local };
    }
    return { label, ov, dv, local: f.local };
  });
  // An outbound row's origin holds the whole local record: fields this sync does not map
  // were not sent, so they are not listed as if they had been.
  if (!inbound) Object.keys(o).forEach((k) => used.add(k));
  for (const k of [...new Set([...Object.keys(o), ...Object.keys(d)])].sort()) {
    if (!used.has(k)) rows.push({ label: k, ov: o[k], dv: d[k], local: k });
  }
  // A transformed value differs from what it was made of by design: highlighted when it
  // is empty, as a plain pair is when it differs.
  rows.forEach((r) => {
    if (r.changed === undefined) r.changed = r.transformed ? r.dv === undefined : JSON.stringify(r.ov) !== JSON.stringify(r.dv);
  });
  const cell = (v, changed) => h("td", { class: changed ? "changed" : "" }, v === undefined ? h("span", { class: "muted" }, "—") : pretty(v));
  // An update that knows what the local record held before: each field before and after, and
  // what this change changed marked (not values that differ only by the mapping).
  const before = c.before_values || {};
  if (Object.keys(before).length) {
    rows.forEach((r) => {
      r.had = r.local && r.local in before;
      r.bv = r.had ? before[r.local] : undefined;
    });
    const head = inbound
      ? ["Field (local ↔ external)", "Origin (external, as received)", "Destination (local, after)", "Local before"]
      : ["Field (local ↔ external)", "Origin (local, after)", "Destination (external, as sent)", "Local before (as last synced)"];
    return h("table", { class: "diff", "aria-label": "Values, before and after" },
      h("thead", {}, h("tr", {}, head.map((t) => h("th", { scope: "col" }, t)))),
      h("tbody", {}, rows.map((r) => h("tr", { "data-field": r.label, class: r.had ? "changed" : "" },
        h("th", { scope: "row" }, r.label),
        cell(r.ov, r.had && !inbound), cell(r.dv, r.had && inbound),
        r.had ? h("td", { class: "before" }, r.bv === undefined || r.bv === null ? h("span", { class: "muted" }, "(empty)") : pretty(r.bv))
          : h("td", { class: "muted" }, "unchanged")))));
  }
  return h("table", { class: "diff", "aria-label": "Values, origin against destination" },
    h("thead", {}, h("tr", {},
      ["Field (local ↔ external)", inbound ? "Origin (external)" : "Origin (local)", inbound ? "Destination (local)" : "Destination (external)"]
        .map((t) => h("th", { scope: "col" }, t)))),
    h("tbody", {}, rows.map((r) => h("tr", { "data-field": r.label, class: r.changed ? "changed" : "" },
      h("th", { scope: "row" }, r.label), cell(r.ov, r.changed), cell(r.dv, r.changed)))));
}

// Arrows read from the local side to the external side.
const ARROWS = { to_external: "→", to_local: "←", bidirectional: "↔", local_to_external: "→", external_to_local: "←" };
function arrow(direction) {
  return ARROWS[direction] || "";
}
function directionLabel(direction) {
  return `${arrow(direction)} ${direction.replace(/_/g, " ")}`;
}

function pretty(v) {
  return v === undefined ? "" : typeof v === "string" ? v : JSON.stringify(v);
}

async function changeDetail(id) {
  show(h("h1", {}, `Change ${id}`), loading("the change"));
  let c;
  try {
    c = await api(`/api/v1/changes/${encodeURIComponent(id)}`);
  } catch (e) {
    show(h("h1", {}, `Change ${id}`), errorBox(e), h("p", {}, h("a", { href: "#/changes" }, "Back to the change log")));
    return;
  }
  const meta = h("dl", { class: "card meta" },
    ...[
      ["Operation", c.name], ["Sync", c.sync], ["Direction", directionLabel(c.direction)], ["Action", c.action],
      ["Status", status(c.status)], ["External id", c.external_id || "—"], ["Local id", c.local_id ?? "—"],
      ["Synced", time(c.synced_at)], ["Modified at source", time(c.modified_at)], ["Actor", c.actor], ["Run", c.run_id ?? "—"],
    ].flatMap(([k, v]) => [h("dt", {}, k), h("dd", {}, v)]));
  let diff;
  const o = c.origin_values || {}, d = c.destination_values || {};
  if (c.action === "conflict" && o.field !== undefined) {
    diff = h("table", { class: "diff", "aria-label": "Conflict" },
      h("thead", {}, h("tr", {}, ["Field", "Base", "Local", "External", "Result"].map((t) => h("th", { scope: "col" }, t)))),
      h("tbody", {}, h("tr", { class: "conflict" },
        h("td", {}, o.field), h("td", {}, pretty(o.base)), h("td", {}, pretty(o.local)), h("td", {}, pretty(o.external)),
        h("td", {}, pretty(d[o.field])))));
  } else {
    diff = await pairedDiff(c, o, d);
  }
  if (!diff) {
    const fields = [...new Set([...Object.keys(o), ...Object.keys(d)])].sort();
    diff = fields.length
      ? h("table", { class: "diff", "aria-label": "Values, origin against destination" },
          h("thead", {}, h("tr", {}, ["Field", "Origin", "Destination"].map((t) => h("th", { scope: "col" }, t)))),
          h("tbody", {}, fields.map((f) => {
            const changed = JSON.stringify(o[f]) !== JSON.stringify(d[f]);
            return h("tr", { "data-field": f, class: changed ? "changed" : "" },
              h("th", { scope: "row" }, f),
              h("td", { class: changed ? "changed" : "" }, f in o ? pretty(o[f]) : h("span", { class: "muted" }, "—")),
              h("td", { class: changed ? "changed" : "" }, f in d ? pretty(d[f]) : h("span", { class: "muted" }, "—")));
          })))
      : empty("This row carries no values.");
  }
  const history = [];
  if (c.local_id) history.push(h("a", { href: `#/history${query({ local_id: c.local_id })}` }, `History of local record #${c.local_id}`));
  if (c.external_id) history.push(h("a", { href: `#/history${query({ external_id: c.external_id })}` }, `History of external id ${c.external_id}`));
  show(
    h("p", {}, h("a", { href: "#/changes" }, "← Change log")),
    h("h1", {}, `${c.name}: ${c.title || c.external_id || c.local_id || ""}`),
    c.error_message ? h("div", { class: c.status === "failed" ? "error" : "notice", role: c.status === "failed" ? "alert" : "note" }, c.error_message) : null,
    meta,
    h("h2", {}, c.action === "conflict" ? "Conflict"
      : Object.keys(c.before_values || {}).length ? "Values before and after (highlighted: what this change changed)"
      : "Values (highlighted where the destination is not what the mapping makes of the origin)"),
    diff,
    history.length ? h("p", {}, history.flatMap((a, i) => (i ? [" · ", a] : [a]))) : null,
  );
}

async function history() {
  const p = hashParams();
  const local = p.get("local_id") || "", ext = p.get("external_id") || "";
  const form = h("form", { class: "filters", role: "search", "aria-label": "Find a record" },
    h("label", {}, "Local record id", h("input", { name: "local_id", inputmode: "numeric", value: local })),
    h("label", {}, "External id", h("input", { name: "external_id", value: ext })),
    h("div", { class: "buttons" }, h("button", { type: "submit" }, "Show history")));
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    const data = new FormData(form);
    location.hash = `#/history${query({ local_id: data.get("local_id").trim(), external_id: data.get("external_id").trim() })}`;
  });
  if (!local && !ext) {
    show(h("h1", {}, "Record history"), form, empty("Enter a local record id or an external id to see every change of that record, across all syncs."));
    return;
  }
  show(h("h1", {}, "Record history"), form, loading("the history"));
  try {
    const calls = [];
    if (local) calls.push(api(`/api/v1/changes${query({ local_id: local, limit: 1000 })}`));
    if (ext) calls.push(api(`/api/v1/changes${query({ external_id: ext, limit: 1000 })}`));
    const seen = new Map();
    for (const r of await Promise.all(calls)) for (const c of r.changes) seen.set(c.id, c);
    const rows = [...seen.values()].sort((a, b) => a.id - b.id);
    const list = h("ol", { class: "timeline", "aria-label": "Changes, oldest first" },
      rows.map((c) => h("li", { class: c.status },
        h("div", {}, time(c.synced_at), " · ", h("strong", {}, c.sync), " · ",
          h("span", { class: "direction", title: c.direction.replace(/_/g, " ") }, c.direction === "external_to_local" ? "← in" : "→ out"),
          " · ", c.action, " · ", status(c.status)),
        h("div", {}, h("a", { href: `#/change/${c.id}` }, c.name), c.title ? ` — ${c.title}` : ""),
        // A failure's error in red; the note of any other row (a skip, a conflict settled) as a note.
        c.error_message ? h("div", { class: c.status === "failed" ? "status-failed" : "note", "data-note": c.status }, prose(c.error_message)) : null)));
    // The syncs that carried this local record: its state in each, and the per-record
    // operations.
    const codes = local ? [...new Set(rows.filter((c) => String(c.local_id) === local && c.sync).map((c) => c.sync))] : [];
    const states = await Promise.all(codes.map((code) => recordState(code, local)));
    show(h("h1", {}, "Record history"), form,
      codes.length ? recordOps(local, codes, states) : null,
      rows.length ? list : empty("No change-control row mentions this record yet."));
  } catch (e) {
    show(h("h1", {}, "Record history"), form, errorBox(e));
  }
}

// A message with `code` in backticks (a command, a value, a key), shown with the code set as
// code; inserted as text like everything else, never as HTML.
function prose(text) {
  const parts = String(text ?? "").split("`");
  if (parts.length < 3 || parts.length % 2 === 0) return text;
  return parts.map((p, i) => (i % 2 ? h("code", {}, p) : p));
}

// A plan: what a run of one sync would do on each side. Nothing is written.
const PLAN_KINDS = ["create", "update", "delete", "unlink", "link", "conflict", "ambiguous", "held", "skipped", "failed", "unchanged"];

function planSample(kind, s) {
  const parts = [];
  if (s.local_id != null) parts.push(h("a", { href: `#/history${query({ local_id: s.local_id })}` }, `#${s.local_id}`));
  if (s.external_id != null) parts.push(h("code", {}, s.external_id));
  if (s.title) parts.push(s.title);
  if (s.changes) {
    for (const [f, c] of Object.entries(s.changes)) parts.push(h("span", { class: "change" }, `${f}: ${pretty(c.from)} → ${pretty(c.to)}`));
  }
  if (s.values) parts.push(Object.entries(s.values).map(([f, v]) => `${f} = ${pretty(v)}`).join(", "));
  if (s.field) parts.push(`${s.field}: local ${pretty(s.local)} / external ${pretty(s.external)}, ${s.winner} wins`);
  if (s.match_on) parts.push(`equal ${s.match_on.join(", ")}`);
  if (s.candidates) parts.push(`candidates ${s.candidates.map((c) => `#${c}`).join(", ")}`);
  if (s.reason) parts.push(prose(s.reason));
  if (s.error) parts.push(h("span", { class: "status-failed" }, prose(s.error)));
  return h("li", {}, h("strong", {}, kind), " ", parts.map((p, i) => [i ? " · " : "", p]));
}

function planSide(title, side) {
  const kinds = PLAN_KINDS.filter((k) => side.counts[k]);
  const samples = kinds.filter((k) => k !== "unchanged").flatMap((k) => {
    const list = side.samples[k] || [];
    const more = side.counts[k] - list.length;
    return [...list.map((s) => planSample(k, s)), more > 0 ? h("li", { class: "muted" }, `… and ${more} more ${k}`) : null];
  });
  return h("section", { class: "card", "aria-label": title },
    h("h2", {}, title),
    kinds.length
      ? h("table", { class: "counts" }, h("tbody", {}, kinds.map((k) => h("tr", { "data-kind": k }, h("th", { scope: "row" }, k), h("td", { class: "num" }, side.counts[k])))))
      : h("p", { class: "muted" }, "Nothing to do."),
    samples.length ? h("ul", { class: "samples" }, samples) : null);
}

async function planPage() {
  const p = hashParams();
  const code = p.get("sync") || "";
  const full = p.get("full") === "true";
  const title = () => h("h1", {}, `Plan of ${code}`);
  const toggle = h("p", {},
    h("a", { href: `#/plan${query({ sync: code, full: full ? "" : "true" })}` }, full ? "Plan an ordinary run instead" : "Plan a full run (everything read, listed and sent again)"),
    " · ", h("a", { href: "#/" }, "Back to the syncs"));
  if (!code) {
    show(h("h1", {}, "Plan"), empty("Choose “Plan” on a sync to see what its next run would do."));
    return;
  }
  show(title(), loading("the plan (the external system is read, nothing is written)"));
  let r;
  try {
    r = await api(`/api/v1/syncs/${encodeURIComponent(code)}/plan${full ? "?full=true" : ""}`, { method: "POST" });
  } catch (e) {
    show(title(), errorBox(e), toggle);
    return;
  }
  show(
    title(),
    h("div", { class: "notice", role: "status" }, `What ${r.full ? "a full" : "the next"} run of ${r.sync} would do. Nothing was written and nothing was confirmed.`),
    toggle,
    r.holds.map((hold) => h("div", { class: "error", role: "alert" },
      `${hold.deletes} deletes ${hold.side === "local" ? "here" : "on the external side"} would be held for approval: `, prose(hold.reason), ".")),
    r.reconcile ? h("p", {}, `Reconciliation would find ${r.reconcile.missing} missing, ${r.reconcile.extra} extra and ${r.reconcile.different} different records.`) : null,
    h("div", { class: "cards", id: "plan" },
      planSide("Here: local records", r.local),
      planSide("There: the external system", r.external)),
    r.round_trip && r.round_trip.length ? roundTrips(r.round_trip) : null,
    r.notes.length ? h("ul", { class: "notes" }, r.notes.map((n) => h("li", { class: "muted" }, prose(n)))) : null,
  );
}

// Two-way transformed fields: the values that do not come back as they went out.
function roundTrips(trips) {
  return h("section", { class: "card", id: "round-trip", "aria-label": "Round trip of transformed fields" },
    h("h2", {}, "Round trip of transformed fields"),
    trips.map((t) => h("div", { "data-field": t.field },
      h("p", { class: t.lossy ? "status-failed" : "muted" },
        t.lossy
          ? `${t.field} ↔ ${t.external}: ${t.lossy} of ${t.checked} values do not come back equal, so they would change or flip-flop between the systems.`
          : t.checked ? `${t.field} ↔ ${t.external}: all ${t.checked} values come back equal.` : `${t.field} ↔ ${t.external}: no value to check.`),
      t.lossy ? h("p", { class: "muted" }, "to_external ", h("code", {}, t.to_external), " · to_local ", h("code", {}, t.to_local)) : null,
      t.samples.length ? h("ul", { class: "samples" }, t.samples.map((s) => h("li", {},
        s.local_id != null ? h("a", { href: `#/history${query({ local_id: s.local_id })}` }, `#${s.local_id}`) : h("code", {}, s.external_id),
        // Quoted, so that a space lost or gained shows.
        ` ${JSON.stringify(s.value)} → sent ${JSON.stringify(s.sent)} → back `,
        s.error ? h("span", { class: "status-failed" }, s.error) : JSON.stringify(s.back)))) : null,
      t.lossy > t.samples.length ? h("p", { class: "muted" }, `… and ${t.lossy - t.samples.length} more`) : null)));
}

// One record, one sync: pause, resume, unlink, relink or re-read it (operate keys).
// A record's state in one sync, in words.
function stateText(s) {
  if (!s) return "";
  const parts = [
    s.state === "linked" ? `linked to ${s.external_id ?? "(its id is on its way)"}`
      : s.state === "detached" ? `detached (hold ${s.detached_by_hold} discarded)`
      : s.state === "left_domain" ? "outside the sync's domain"
      : "not linked",
  ];
  if (s.paused) parts.push("paused");
  return parts.join(" · ");
}

const recordState = (code, local) =>
  api(`/api/v1/syncs/${encodeURIComponent(code)}/records/${encodeURIComponent(local)}`).catch(() => null);

// One record in each sync that carried it: its state now, and (operate keys) pause, resume,
// unlink, relink or re-read it.
function recordOps(local, codes, states) {
  const note = h("div", { role: "status" });
  const cells = Object.fromEntries(codes.map((code, i) => [code,
    h("td", { class: states[i] && states[i].paused ? "state status-skipped" : "state", "data-state": code }, stateText(states[i]))]));
  const act = (code, op, body) => async (ev) => {
    ev.target.disabled = true;
    try {
      const r = await api(`/api/v1/syncs/${encodeURIComponent(code)}/records/${encodeURIComponent(local)}/${op}`,
        { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body ? body() : {}) });
      note.replaceChildren(h("div", { class: "notice" }, `${code}: ${r.message}.`));
    } catch (err) {
      note.replaceChildren(errorBox(err));
    }
    const now = await recordState(code, local);
    cells[code].className = now && now.paused ? "state status-skipped" : "state";
    cells[code].textContent = stateText(now);
    ev.target.disabled = false;
  };
  const rows = codes.map((code) => {
    const ext = h("input", { name: "external_id", "aria-label": `External id to link #${local} to in ${code}`, placeholder: "external id", size: 12 });
    return h("tr", { "data-sync": code },
      h("th", { scope: "row" }, code),
      cells[code],
      me.operate
        ? h("td", {},
            ["pause", "resume", "unlink", "resync"].map((op) => [h("button", { type: "button", class: op === "unlink" ? "danger" : "secondary", "data-op": op, onclick: act(code, op) }, op), " "]),
            ext, " ",
            h("button", { type: "button", class: "secondary", "data-op": "relink", onclick: act(code, "relink", () => ({ external_id: ext.value.trim() })) }, "relink"))
        : null);
  });
  return h("section", { class: "card", "aria-label": "This record in each sync" },
    h("h2", {}, `Record #${local} in each sync`),
    me.operate ? h("p", { class: "muted" }, "Pause stops a sync from sending or overwriting the record until resumed; unlink ends its link; relink links it to another external id; resync reads it again from the external side.") : null,
    h("table", { id: "record-ops" }, h("tbody", {}, rows)), note);
}

async function deadLetters() {
  show(h("h1", {}, "Dead letters"), loading("the dead letters"));
  let r;
  try {
    r = await api("/api/v1/outbox?status=dead&limit=500");
  } catch (e) {
    show(h("h1", {}, "Dead letters"), errorBox(e));
    return;
  }
  if (!r.entries.length) {
    show(h("h1", {}, "Dead letters"), empty("No dead letters. Deliveries that use up their retries land here, with their last error, to be retried or discarded."));
    return;
  }
  const note = h("div", { role: "status" });
  const act = (e, verb) => async (ev) => {
    const row = ev.target.closest("tr");
    row.querySelectorAll("button").forEach((b) => { b.disabled = true; });
    try {
      await api(`/api/v1/outbox/${e.id}/${verb}`, { method: "POST" });
      note.replaceChildren(h("div", { class: "notice" }, verb === "retry" ? `Entry ${e.id} is queued again.` : `Entry ${e.id} was discarded.`));
      row.remove();
    } catch (err) {
      note.replaceChildren(errorBox(err));
      row.querySelectorAll("button").forEach((b) => { b.disabled = false; });
    }
  };
  // Every dead letter shown, retried or discarded at once (one call per entry, in order).
  const all = (verb) => async (ev) => {
    if (verb === "discard" && !window.confirm(`Discard all ${r.entries.length} dead letters? Their changes will not be sent.`)) return;
    const buttons = document.querySelectorAll("#dead button, #dead-all button");
    buttons.forEach((b) => { b.disabled = true; });
    let done = 0;
    try {
      for (const e of r.entries) {
        await api(`/api/v1/outbox/${e.id}/${verb}`, { method: "POST" });
        done += 1;
      }
      note.replaceChildren(h("div", { class: "notice" }, verb === "retry" ? `${done} entries are queued again.` : `${done} entries were discarded.`));
      document.querySelector("#dead tbody").replaceChildren();
    } catch (err) {
      note.replaceChildren(errorBox(err), h("p", {}, `${done} of ${r.entries.length} done before the error; reload to see what is left.`));
      buttons.forEach((b) => { b.disabled = false; });
    }
  };
  show(
    h("h1", {}, "Dead letters"), note,
    me.operate
      ? h("div", { class: "actions", id: "dead-all" },
          h("button", { type: "button", onclick: all("retry") }, `Retry all (${r.entries.length})`), " ",
          h("button", { type: "button", class: "danger", onclick: all("discard") }, `Discard all (${r.entries.length})`))
      : null,
    h("table", { id: "dead" },
      h("thead", {}, h("tr", {}, ["Entry", "Sync", "Record", "Action", "Attempts", "Last error", "Queued", me.operate ? "" : null].filter((t) => t !== null).map((t) => h("th", { scope: "col" }, t)))),
      h("tbody", {}, r.entries.map((e) => h("tr", { "data-id": e.id },
        h("td", { class: "num" }, e.id), h("td", {}, e.sync),
        h("td", {}, h("a", { href: `#/history${query({ local_id: e.local_id })}` }, e.title || `#${e.local_id}`)),
        h("td", {}, e.action), h("td", { class: "num" }, e.attempts), h("td", { class: "wrap" }, e.last_error || ""),
        h("td", {}, time(e.created_at)),
        me.operate ? h("td", {},
          h("button", { type: "button", onclick: act(e, "retry") }, "Retry"), " ",
          h("button", { type: "button", class: "danger", onclick: act(e, "discard") }, "Discard")) : null)))),
  );
}

async function holds() {
  const title = () => h("h1", {}, "Held deletes");
  show(title(), loading("the held deletes"));
  let r;
  try {
    r = await api("/api/v1/holds?status=held");
  } catch (e) {
    show(title(), errorBox(e));
    return;
  }
  if (!r.holds.length) {
    show(title(), empty("No held deletes. When a run would delete more records than a sync's delete_guard allows, its deletes wait here for a person to approve or discard them."));
    return;
  }
  const note = h("div", { role: "status" });
  const act = (hold, verb) => async (ev) => {
    const row = ev.target.closest("tr");
    row.querySelectorAll("button").forEach((b) => { b.disabled = true; });
    try {
      const done = await api(`/api/v1/holds/${hold.id}/${verb}`, { method: "POST" });
      note.replaceChildren(h("div", { class: "notice" }, verb === "approve"
        ? `Hold ${hold.id} approved: ${done.deleted} records deleted.`
        : `Hold ${hold.id} discarded: nothing was deleted.`));
      row.remove();
    } catch (err) {
      note.replaceChildren(errorBox(err));
      row.querySelectorAll("button").forEach((b) => { b.disabled = false; });
    }
  };
  // The first deletes of each hold, so a person sees what would go.
  const items = await Promise.all(r.holds.map((hold) =>
    api(`/api/v1/holds/${hold.id}?limit=20`).then((d) => d.deletes).catch(() => [])));
  show(
    title(), note,
    h("table", { id: "holds" },
      h("thead", {}, h("tr", {}, ["Hold", "Sync", "Deletes", "Why", "Records", "Held", me.operate ? "" : null].filter((t) => t !== null).map((t) => h("th", { scope: "col" }, t)))),
      h("tbody", {}, r.holds.map((hold, i) => h("tr", { "data-id": hold.id },
        h("td", { class: "num" }, hold.id), h("td", {}, hold.sync),
        h("td", { class: "num" }, hold.items, h("div", { class: "muted" }, hold.direction === "local_to_external" ? "→ there" : "← here")),
        h("td", { class: "wrap" }, hold.reason),
        h("td", { class: "wrap" }, items[i].map((d, n) => [n ? ", " : "",
          d.local_id ? h("a", { href: `#/history${query({ local_id: d.local_id })}` }, d.name || `#${d.local_id}`) : d.external_id]),
          hold.items > items[i].length ? ` and ${hold.items - items[i].length} more` : ""),
        h("td", {}, time(hold.created_at)),
        me.operate ? h("td", {},
          h("button", { type: "button", class: "danger", onclick: act(hold, "approve") }, "Approve deletes"), " ",
          h("button", { type: "button", onclick: act(hold, "discard") }, "Discard")) : null)))),
  );
}

async function configPage() {
  show(h("h1", {}, "Configuration"), loading("the configuration"));
  let c;
  try {
    c = await api("/api/v1/config");
  } catch (e) {
    show(h("h1", {}, "Configuration"), errorBox(e));
    return;
  }
  const errors = c.errors.length
    ? h("div", { class: "error", role: "alert" },
        h("strong", {}, "The last edit of the mapping files was rejected; the configuration below keeps running.\n\n"),
        c.errors.join("\n\n"))
    : h("div", { class: "notice" }, "The mapping files on disk are valid and loaded.");
  const syncs = h("table", {},
    h("thead", {}, h("tr", {}, ["Sync", "Local model", "External model", "Web service", "Direction", "Mode", "Priority", "Fields"].map((t) => h("th", { scope: "col" }, t)))),
    h("tbody", {}, c.syncs.map((s) => h("tr", {},
      h("td", {}, s.code), h("td", {}, s.model), h("td", {}, s.external_model), h("td", {}, s.web_service),
      h("td", {}, directionLabel(s.direction)), h("td", {}, s.mode, s.schedule ? ` (${s.schedule}, ${s.timezone})` : ""),
      h("td", {}, s.priority),
      h("td", { class: "wrap" }, s.fields.map((f) => `${f.local} ${arrow(f.direction)} ${f.external}`).join(", "))))));
  const models = h("table", {},
    h("thead", {}, h("tr", {}, ["Model", "Fields"].map((t) => h("th", { scope: "col" }, t)))),
    h("tbody", {}, c.models.map((m) => h("tr", {}, h("td", {}, m.name),
      h("td", { class: "wrap" }, m.fields.map((f) => `${f.name}: ${f.type}${f.required ? " (required)" : ""}${f.secret ? " (secret)" : ""}`).join(", "))))));
  const services = h("table", {},
    h("thead", {}, h("tr", {}, ["Web service", "Kind", "Addresses"].map((t) => h("th", { scope: "col" }, t)))),
    h("tbody", {}, c.web_services.map((w) => h("tr", {}, h("td", {}, w.name), h("td", {}, w.kind),
      h("td", { class: "wrap" }, [...new Set([w.url, w.confirmation_url, w.shipping_url, w.api_url].filter(Boolean))].join(" · ") || "—")))));
  show(h("h1", {}, "Configuration"), errors, h("h2", {}, "Syncs"), syncs, h("h2", {}, "Models"), models,
    h("h2", {}, "Web services"), services,
    h("p", { class: "muted" }, "Secrets (keys, tokens, values read from the environment) are never shown; an address written with ${…} shows its scheme and host, and /… for the rest."));
}

// Icons are drawn by the style sheet (no emoji: not every system has a font for them).
function treeNode(n) {
  const label = `${n.name}${n.tag === "file" && n.size != null ? ` (${n.size} bytes)` : ""}`;
  if (n.tag === "folder" && (n.children || []).length) {
    return h("details", { class: "tree", open: true },
      h("summary", {}, h("span", { class: "icon-folder", "aria-hidden": "true" }), n.name), n.children.map(treeNode));
  }
  if (n.tag === "folder") {
    // Nothing to open: no disclosure triangle.
    return h("div", { class: "folder empty-folder" }, h("span", { class: "icon-folder", "aria-hidden": "true" }), n.name, h("span", { class: "muted" }, " (empty)"));
  }
  return h("div", { class: "file" }, h("span", { class: "icon-file", "aria-hidden": "true" }), label);
}

async function trees() {
  show(h("h1", {}, "Dropbox trees"), loading("the Dropbox syncs"));
  let c;
  try {
    c = await api("/api/v1/config");
  } catch (e) {
    show(h("h1", {}, "Dropbox trees"), errorBox(e));
    return;
  }
  const dropbox = new Set(c.web_services.filter((w) => w.kind === "dropbox").map((w) => w.name));
  const syncs = c.syncs.filter((s) => dropbox.has(s.web_service));
  if (!syncs.length) {
    show(h("h1", {}, "Dropbox trees"), empty("No Dropbox sync is configured. Declare a web service with kind = \"dropbox\" and a sync on it; its mirrored folder tree appears here."));
    return;
  }
  const sections = [];
  for (const s of syncs) {
    let content;
    try {
      const t = await api(`/api/v1/syncs/${encodeURIComponent(s.code)}/tree`);
      content = t && (t.children || []).length ? treeNode({ ...t, tag: "folder", name: t.name || "/" }) : empty("The folder is empty or not mirrored yet.");
    } catch (e) {
      content = e.status === 404 ? empty("This build does not mirror Dropbox folders yet.") : errorBox(e);
    }
    sections.push(h("section", { class: "card" }, h("h2", {}, s.code), content));
  }
  show(h("h1", {}, "Dropbox trees"), ...sections);
}

// ---- routing -------------------------------------------------------------------------------

const PAGES = { dashboard, changes, history, dead: deadLetters, holds, plan: planPage, config: configPage, trees };

function route() {
  if (!sessionStorage.getItem(KEY)) {
    keyForm();
    return;
  }
  if (!me) {
    signIn();
    return;
  }
  const path = location.hash.replace(/^#/, "").split("?")[0] || "/";
  let page = "dashboard", arg = null;
  const m = path.match(/^\/change\/(\d+)$/);
  if (m) {
    page = "changes";
    arg = m[1];
  } else if (path !== "/") {
    page = path.slice(1);
  }
  for (const a of document.querySelectorAll("nav a")) {
    if (a.dataset.page === page) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  }
  if (arg) return changeDetail(arg);
  const fn = PAGES[page];
  if (!fn) {
    show(h("h1", {}, "Not found"), empty("There is no such page. Use the navigation above."));
    return;
  }
  fn();
  main.focus({ preventScroll: true });
}

window.addEventListener("hashchange", route);
route();
