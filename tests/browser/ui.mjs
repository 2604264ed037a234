// Browser tests of the web UI: `recsync demo` in a temporary folder, driven by playwright-core
// in Debian's Chromium (headless, --no-sandbox). Screenshots of every page go to $SCREENSHOTS.
// Run by tests/browser.rs (cargo test), which passes RECSYNC_BIN.

import { chromium } from "playwright-core";
import { spawn } from "node:child_process";
import { mkdtempSync, mkdirSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import assert from "node:assert/strict";

const bin = process.env.RECSYNC_BIN;
const shots = process.env.SCREENSHOTS || "target/ui-screenshots";
const chromePath = process.env.CHROMIUM || "/usr/bin/chromium";
assert.ok(bin, "RECSYNC_BIN names the recsync binary");
mkdirSync(shots, { recursive: true });

// ---- start the demo -------------------------------------------------------------------------
const dir = mkdtempSync(join(tmpdir(), "recsync-ui-"));
const demo = spawn(bin, ["demo", "--listen", "127.0.0.1:0", "--peer-listen", "127.0.0.1:0"], {
  cwd: dir,
  env: { ...process.env, RECSYNC_OUTBOX_MAX_ATTEMPTS: "1", RECSYNC_OUTBOX_BACKOFF: "100ms", RUST_LOG: "warn" },
  stdio: ["ignore", "pipe", "pipe"],
});
let out = "";
demo.stdout.on("data", (d) => { out += d; });
demo.stderr.on("data", (d) => { process.stderr.write(d); });
const started = Date.now();
while (!/Peer records:/.test(out)) {
  if (Date.now() - started > 60_000) throw new Error(`the demo did not start:\n${out}`);
  if (demo.exitCode !== null) throw new Error(`the demo exited:\n${out}`);
  await new Promise((r) => setTimeout(r, 100));
}
const ui = out.match(/Web UI:\s+(http:\/\/\S+?)\/\s+\(key: (\S+); read-only key: (\S+)\)/);
assert.ok(ui, `the demo prints the UI address and keys:\n${out}`);
const [, base, adminKey, viewerKey] = ui;
const peer = out.match(/Peer records:\s+(http:\/\/[^/\s]+)/)[1];
console.log(`demo at ${base}, peer at ${peer}`);

async function call(method, path, body, key = adminKey, headers = {}) {
  const res = await fetch(path.startsWith("http") ? path : base + path, {
    method,
    headers: { "X-Api-Key": key, "Content-Type": "application/json", ...headers },
    body: body === undefined ? undefined : typeof body === "string" ? body : JSON.stringify(body),
  });
  const text = await res.text();
  return { status: res.status, body: text ? JSON.parse(text) : null };
}

async function eventually(what, fn, ms = 20_000) {
  const until = Date.now() + ms;
  for (;;) {
    const v = await fn();
    if (v) return v;
    if (Date.now() > until) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 200));
  }
}

// ---- the browser ----------------------------------------------------------------------------
const browser = await chromium.launch({ executablePath: chromePath, headless: true, args: ["--no-sandbox"] });
const failures = [];
const page = await browser.newPage({ viewport: { width: 1366, height: 900 }, timezoneId: "Europe/Madrid" });
page.on("pageerror", (e) => failures.push(`page error: ${e.message}`));
// The page's own files (script, style, icon; the browser asks /favicon.ico by itself) are
// never missing.
page.on("response", (r) => {
  if (r.status() === 404 && /\/(favicon\.ico|ui\/[^/]+)$/.test(new URL(r.url()).pathname)) {
    failures.push(`404 for ${r.url()}`);
  }
});
page.on("console", (m) => { if (m.type() === "error" && !/status of 4\d\d/.test(m.text())) failures.push(`console: ${m.text()}`); });
const shot = (name) => page.screenshot({ path: join(shots, `${name}.png`), fullPage: true });

async function signIn(key) {
  await page.goto(`${base}/`);
  await page.evaluate(() => sessionStorage.clear());
  await page.goto(`${base}/#/`);
  await page.getByLabel("API key").fill(key);
  await page.getByRole("button", { name: "Continue" }).click();
  await page.locator("section.card[data-sync]").first().waitFor();
}

let step = "";
try {
  // 1. The key, once; then the dashboard.
  step = "sign in";
  await page.goto(`${base}/`);
  await page.getByRole("heading", { name: "Sign in" }).waitFor();
  assert.equal(await page.locator("#nav").isVisible(), false, "no page links before signing in");
  assert.equal(await page.locator("#nav a").first().isVisible(), false, "no page links before signing in");
  const icon = await fetch(`${base}/favicon.ico`);
  assert.equal(icon.status, 200, "/favicon.ico is there");
  assert.match(icon.headers.get("content-type"), /image\/svg\+xml/);
  await shot("00-sign-in");
  await page.getByLabel("API key").fill("not-a-key");
  await page.getByRole("button", { name: "Continue" }).click();
  await page.getByRole("alert").filter({ hasText: "not accepted" }).waitFor();
  await signIn(adminKey);
  step = "dashboard";
  const cards = await page.locator("section.card[data-sync]").count();
  assert.ok(cards >= 2, `one card per sync (${cards})`);
  assert.equal(await page.locator("svg.chart").count(), cards, "a chart per sync");
  const t = page.locator("time").first();
  assert.match(await t.getAttribute("title"), /^UTC: \d{4}-\d\d-\d\dT/, "times show UTC on hover");
  // The key is kept for the tab: a reload stays signed in.
  await page.reload();
  await page.locator("section.card[data-sync]").first().waitFor();
  await shot("01-dashboard");

  // 1b. An overdue sync, as a stalled scheduler leaves it (the server's side is tested in
  // tests/scheduler.rs): a badge on its card and an alert above the cards.
  step = "overdue";
  await page.route("**/api/v1/syncs", async (route) => {
    const res = await route.fetch();
    const json = await res.json();
    json.syncs[0].overdue_seconds = 95;
    await route.fulfill({ response: res, json });
  });
  await page.reload();
  await page.locator("[data-overdue]").first().waitFor();
  assert.equal(await page.locator("[data-overdue]").count(), 1, "one overdue badge");
  assert.match(await page.locator("[data-overdue]").textContent(), /overdue by 95 s/);
  assert.match(await page.locator("#overdue").textContent(), /Overdue: \S+ \(by 95 s\)/);
  await shot("01b-dashboard-overdue");
  await page.unroute("**/api/v1/syncs");
  await page.reload();
  await page.locator("section.card[data-sync]").first().waitFor();
  assert.equal(await page.locator("#overdue").count(), 0, "no alert when nothing is overdue");
  assert.equal(await page.locator("#config-rejected").count(), 0, "no alert while the mapping files are valid");

  // 1c. A mapping edit that was rejected (hot reload keeps the last valid configuration; the
  // server's side is tested in tests/serve.rs): the dashboard says so and links to the errors.
  step = "rejected edit";
  await page.route("**/readyz", async (route) => {
    const res = await route.fetch();
    const json = await res.json();
    json.config.valid = false;
    json.config.errors = 2;
    await route.fulfill({ response: res, json });
  });
  await page.reload();
  const rejected = page.locator("#config-rejected");
  await rejected.waitFor();
  assert.match(await rejected.textContent(), /last edit of the mapping files was rejected \(2 errors\)/);
  assert.equal(await rejected.locator('a[href="#/config"]').count(), 1, "it links to the errors");
  await shot("01c-dashboard-rejected-edit");
  await page.unroute("**/readyz");
  await page.reload();
  await page.locator("section.card[data-sync]").first().waitFor();

  // 2. Run now, and the run's row appears.
  step = "run now";
  const card = page.locator("section.card[data-sync]").first();
  await card.getByRole("button", { name: "Run now" }).click();
  const msg = await card.getByRole("status").filter({ hasText: /Run \d+ started/ }).textContent();
  const runId = msg.match(/Run (\d+)/)[1];
  await page.locator("#runs tbody tr").filter({ has: page.locator(`td:text-is("${runId}")`) }).waitFor();
  // A run that found nothing to do says so.
  const ended = await eventually("the run to end", async () => {
    const r = (await call("GET", "/api/v1/runs?limit=20")).body.runs.find((x) => String(x.id) === runId);
    return r && r.finished_at ? r : null;
  });
  await page.reload();
  await page.locator("#runs").waitFor();
  const noop = ended.status === "success" && !(ended.created + ended.updated + ended.deleted + ended.pushed + ended.failed + ended.held);
  assert.ok(noop, `the demo's first sync has nothing new on a run now: ${JSON.stringify(ended)}`);
  assert.match(await page.locator(`[data-noop="${runId}"]`).textContent(), /nothing (changed|to do)/, "a run that wrote nothing says so");
  await shot("02-dashboard-after-run");

  // 3. A failure, then the change log filtered to failures.
  step = "change log";
  const refused = await call("POST", "/sync/CON/create", { unique_id: "ui-1", full_name: "Ui Test", is_customer: "maybe" });
  assert.equal(refused.status, 422, JSON.stringify(refused.body));
  await page.getByRole("link", { name: "Change log" }).click();
  await page.locator("#changes tbody tr").first().waitFor();
  await page.getByLabel("Status").selectOption("failed");
  await page.getByRole("button", { name: "Filter" }).click();
  await page.waitForURL(/status=failed/);
  // The filtered table has replaced the unfiltered one and finished loading.
  await page.waitForFunction(() => {
    const rows = [...document.querySelectorAll("#changes tbody tr")];
    return !document.querySelector(".loading") && document.querySelector('select[name="status"]').value === "failed"
      && rows.length > 0 && rows.every((r) => r.dataset.status === "failed");
  });
  const statuses = await page.locator("#changes tbody tr").evaluateAll((rows) => rows.map((r) => r.dataset.status));
  assert.ok(statuses.length >= 1 && statuses.every((s) => s === "failed"), `only failures: ${statuses}`);
  await shot("03-change-log-failures");

  // 4. A diff: keyboard to a row, Enter opens it.
  step = "diff";
  await page.getByRole("button", { name: "Clear" }).click();
  await page.waitForURL(/#\/changes$/);
  await page.locator('#changes tbody tr[data-status="success"]').first().focus();
  await page.keyboard.press("Enter");
  await page.waitForURL(/#\/change\/\d+/);
  await page.locator("table.diff").waitFor();
  assert.ok(await page.locator("table.diff td.changed").count() >= 1, "changed fields are highlighted");
  await shot("04-change-diff");
  await page.goto(`${base}/#/change/${(await call("GET", "/api/v1/changes?status=failed&limit=1")).body.changes[0].id}`);
  await page.getByRole("alert").waitFor();
  await shot("05-change-failed");

  // 5. A dead letter: the peer refuses deliveries while a local edit goes out.
  step = "dead letter";
  const put = await fetch(`${peer}/peer/faults`, { method: "PUT", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ fail_next: 100, only: "ship" }) });
  assert.equal(put.status, 200);
  const contacts = (await call("GET", "/api/v1/models/contact/records?limit=50")).body;
  const customer = contacts.records.find((r) => r.customer === true) || contacts.records[0];
  const edit = await call("PATCH", `/api/v1/models/contact/records/${customer.id}`, { name: "Dead Letter Test", customer: true });
  assert.equal(edit.status, 200, JSON.stringify(edit.body));
  await eventually("a dead letter", async () => (await call("GET", "/api/v1/outbox?status=dead")).body.entries.length > 0);
  await fetch(`${peer}/peer/faults`, { method: "PUT", headers: { "Content-Type": "application/json" }, body: JSON.stringify({}) });

  // 6. A read-only key sees everything but no operate buttons.
  step = "read-only";
  await page.getByRole("button", { name: "Sign out" }).click();
  await signIn(viewerKey);
  assert.match(await page.locator("#who").textContent(), /read only/);
  assert.equal(await page.getByRole("button", { name: "Run now" }).count(), 0, "no Run now for a read key");
  await page.getByRole("link", { name: "Dead letters" }).click();
  await page.locator("#dead tbody tr").first().waitFor();
  assert.equal(await page.getByRole("button", { name: "Retry" }).count(), 0, "no Retry for a read key");
  assert.equal(await page.getByRole("button", { name: "Discard" }).count(), 0, "no Discard for a read key");
  assert.equal(await page.getByRole("button", { name: /all/ }).count(), 0, "no bulk buttons for a read key");
  await shot("06-dead-letters-read-only");

  // 7. Retry the dead letter and see it delivered.
  step = "retry";
  await page.getByRole("button", { name: "Sign out" }).click();
  await signIn(adminKey);
  await page.getByRole("link", { name: "Dead letters" }).click();
  const row = page.locator("#dead tbody tr").first();
  await row.waitFor();
  const entry = await row.getAttribute("data-id");
  assert.equal(await row.getByRole("link", { name: "Dead Letter Test" }).count(), 1, "the record is named by its title");
  await shot("07-dead-letters");
  await row.getByRole("button", { name: "Retry" }).click();
  await page.locator(".notice").filter({ hasText: `Entry ${entry} is queued again` }).waitFor();
  await eventually("the retried entry delivered", async () => {
    const all = (await call("GET", "/api/v1/outbox?status=done&limit=1000")).body.entries;
    return all.some((e) => String(e.id) === entry);
  });
  await page.reload();
  await page.locator(".empty").filter({ hasText: "No dead letters" }).waitFor();
  // The dashboard's failed count leaves out the attempt its retry made good, and says so.
  const conStats = (await call("GET", "/api/v1/changes/stats?hours=24")).body.hours.filter((x) => x.sync === "CON");
  const sum = (k) => conStats.reduce((a, x) => a + x[k], 0);
  assert.ok(sum("unresolved") < sum("failed"), `a failure made good is not unresolved: ${JSON.stringify(conStats)}`);
  await page.getByRole("link", { name: "Syncs" }).first().click();
  await page.locator('[data-failed="CON"]').waitFor();
  assert.equal(await page.locator('[data-failed="CON"]').textContent(), `${sum("unresolved")} failed`);
  assert.match(await page.locator('[data-retried="CON"]').textContent(), /\(\d+ more retried since\)/);

  // 7a. Two dead letters, discarded at once (after a confirmation).
  step = "discard all";
  await fetch(`${peer}/peer/faults`, { method: "PUT", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ fail_next: 100, only: "ship" }) });
  const others = contacts.records.filter((r) => r.id !== customer.id).slice(0, 2);
  for (const [i, o] of others.entries()) {
    const e = await call("PATCH", `/api/v1/models/contact/records/${o.id}`, { name: `Bulk ${i}` });
    assert.equal(e.status, 200, JSON.stringify(e.body));
  }
  const dead = await eventually("two dead letters", async () => {
    const d = (await call("GET", "/api/v1/outbox?status=dead")).body.entries;
    return d.length >= 2 ? d : null;
  });
  await fetch(`${peer}/peer/faults`, { method: "PUT", headers: { "Content-Type": "application/json" }, body: JSON.stringify({}) });
  await page.getByRole("link", { name: "Dead letters" }).click();
  await page.locator("#dead tbody tr").nth(1).waitFor();
  page.once("dialog", (d) => d.accept());
  await page.getByRole("button", { name: `Discard all (${dead.length})` }).click();
  await page.locator(".notice").filter({ hasText: `${dead.length} entries were discarded` }).waitFor();
  const discarded = (await call("GET", "/api/v1/outbox?status=discarded&limit=1000")).body.entries.map((e) => e.id);
  for (const d of dead) assert.ok(discarded.includes(d.id), `entry ${d.id} discarded`);
  await page.reload();
  await page.locator(".empty").filter({ hasText: "No dead letters" }).waitFor();

  // 7b. The delivery's row, field by field: the sent value of each mapped field.
  step = "outbound diff";
  const sent = (await call("GET", `/api/v1/changes?direction=local_to_external&status=success&local_id=${customer.id}&limit=1`)).body.changes[0];
  assert.ok(sent, "the delivery wrote a row");
  await page.goto(`${base}/#/change/${sent.id}`);
  await page.locator("table.diff tbody tr").first().waitFor();
  const cells = await page.locator("table.diff tbody tr").evaluateAll((rows) =>
    rows.map((r) => ({ field: r.dataset.field, from: r.querySelectorAll("td")[0].textContent, to: r.querySelectorAll("td")[1].textContent })));
  assert.ok(cells.length >= 1, "mapped fields are listed");
  assert.ok(cells.filter((c) => c.from !== "—").every((c) => c.to !== "—"), `every field with a value shows what was sent: ${JSON.stringify(cells)}`);
  assert.ok(cells.some((c) => c.to === "Dead Letter Test"), `the sent name is shown: ${JSON.stringify(cells)}`);
  assert.ok(!cells.some((c) => ["action", "external_id", "values"].includes(c.field)), `no raw request keys: ${JSON.stringify(cells)}`);
  assert.match(await page.locator("dl.meta").textContent(), /→ local to external/, "the direction has its arrow");
  // A value table and a reference differ on the two sides by design: not marked as changes.
  const mappedRow = page.locator('table.diff tbody tr[data-field*="(value table)"]');
  const refRow = page.locator('table.diff tbody tr[data-field*="(reference by sync COMP)"]');
  assert.equal(await mappedRow.count(), 1, `the stage pair is named a value table: ${JSON.stringify(cells)}`);
  assert.equal(await refRow.count(), 1, `the company pair is named a reference: ${JSON.stringify(cells)}`);
  const refCells = await refRow.locator("td").allTextContents();
  assert.ok(refCells[0] !== "—" && refCells[1] !== "—" && refCells[0] !== refCells[1], `the reference has a local and an external id: ${refCells}`);
  assert.equal(await refRow.getAttribute("class"), "", "a reference's two ids are not a change");
  assert.equal(await mappedRow.getAttribute("class"), "", "a value translated by its table is not a change");
  // An update: each field's local value before it, and what it changed marked.
  assert.match(await page.locator("h2").filter({ hasText: "Values" }).textContent(), /before and after/);
  const nameRow = page.locator('table.diff tbody tr[data-field^="name "]');
  assert.equal(await nameRow.count(), 1, `the name pair: ${JSON.stringify(cells)}`);
  assert.equal(await nameRow.getAttribute("class"), "changed", "the edited name is marked");
  assert.deepEqual(await nameRow.locator("td").allTextContents(), ["Dead Letter Test", "Dead Letter Test", customer.name],
    "the name after, as sent, and before the edit");
  assert.equal(await mappedRow.locator("td").nth(2).textContent(), "unchanged", "a field the edit left alone says so");
  await shot("04b-change-diff-mapped");

  // 7c. A partial listing: a reconciliation would delete most contacts, and the guard holds
  // the deletes for a person, who discards them here.
  step = "held deletes";
  const share = await fetch(`${peer}/peer/faults`, { method: "PUT", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ list_share: 0.25 }) });
  assert.equal(share.status, 200);
  const kept = (await call("GET", "/api/v1/models/contact/records?limit=100")).body.records.length;
  const full = await call("POST", "/api/v1/syncs/CON/run?full=true");
  assert.equal(full.status, 202, JSON.stringify(full.body));
  await eventually("a hold", async () => (await call("GET", "/api/v1/holds")).body.holds.length > 0);
  await fetch(`${peer}/peer/faults`, { method: "PUT", headers: { "Content-Type": "application/json" }, body: JSON.stringify({}) });
  await page.getByRole("link", { name: "Held deletes" }).click();
  const held = page.locator("#holds tbody tr").first();
  await held.waitFor();
  assert.match(await held.textContent(), /delete_guard\.max/, "the hold says why");
  await shot("11-held-deletes");
  await held.getByRole("button", { name: "Discard" }).click();
  await page.locator(".notice").filter({ hasText: "nothing was deleted" }).waitFor();
  assert.equal((await call("GET", "/api/v1/models/contact/records?limit=100")).body.records.length, kept, "nothing deleted");
  await page.reload();
  await page.locator(".empty").filter({ hasText: "No held deletes" }).waitFor();

  // 7d. A plan: the same partial listing, planned from the sync's card. The page says the
  // deletes would be held, and nothing is written (no hold, no change-control row).
  step = "plan";
  await fetch(`${peer}/peer/faults`, { method: "PUT", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ list_share: 0.25 }) });
  // The full run of 7c has ended (its last row written) before the rows are counted.
  await eventually("the full run ended", async () => (await call("GET", "/api/v1/runs?sync=CON&limit=1")).body.runs[0].status !== "running");
  const lastRow = async () => (await call("GET", "/api/v1/changes?limit=1")).body.changes[0]?.id ?? 0;
  const rowsBefore = await lastRow();
  await page.getByRole("link", { name: "Syncs" }).first().click();
  await page.locator('a[data-plan="CON"]').click();
  await page.waitForURL(/#\/plan\?sync=CON/);
  await page.locator("#plan").waitFor();
  await page.getByRole("link", { name: /Plan a full run/ }).click();
  await page.waitForURL(/full=true/);
  await page.locator(".notice").filter({ hasText: "What a full run of CON would do" }).waitFor();
  assert.match(await page.locator("main").textContent(), /Nothing was written/, "the plan says it wrote nothing");
  assert.match(await page.getByRole("alert").first().textContent(), /would be held for approval: .*delete_guard\.max/, "the plan shows the hold");
  assert.ok(Number(await page.locator('#plan tr[data-kind="held"] td').first().textContent()) >= 3, "held deletes are counted");
  await shot("12-plan");
  await fetch(`${peer}/peer/faults`, { method: "PUT", headers: { "Content-Type": "application/json" }, body: JSON.stringify({}) });
  assert.equal((await call("GET", "/api/v1/holds?status=held")).body.holds.length, 0, "the plan held nothing");
  const newRows = (await call("GET", "/api/v1/changes?limit=50")).body.changes.filter((c) => c.id > rowsBefore);
  assert.deepEqual(newRows, [], "the plan wrote no row");
  assert.equal((await call("GET", "/api/v1/models/contact/records?limit=100")).body.records.length, kept, "the plan deleted nothing");

  // 7e. Field transforms, as the UI shows them (the server's side is tested in tests/plan.rs
  // and tests/odoo.rs): the plan's round-trip card, and a change row's diff naming the
  // expression of a transformed pair, what it read and what it made.
  step = "round trip";
  const toLocal = "value | regex_replace('[^0-9+]', '')";
  await page.route("**/api/v1/syncs/CON/plan*", async (route) => {
    const res = await route.fetch();
    const json = await res.json();
    json.round_trip = [{
      field: "phone", external: "phone", to_local: toLocal, to_external: "value", checked: 3, lossy: 2,
      samples: [{ local_id: customer.id, value: "+34 600 111 222", sent: "+34 600 111 222", back: "+34600111222" }],
    }];
    // A note as the server writes them, with code in backticks.
    json.notes = ["a full run sends every linked record again: 4 of them carry what the external side already has (`unchanged`)"];
    await route.fulfill({ response: res, json });
  });
  await page.goto(`${base}/#/plan?sync=CON`);
  const trip = page.locator("#round-trip");
  await trip.waitFor();
  // Backticks in the plan's notes mark code: shown as code, not as backticks.
  const notes = page.locator("ul.notes");
  assert.doesNotMatch(await notes.textContent(), /`/, "no literal backticks in the notes");
  assert.equal(await notes.locator("code").textContent(), "unchanged", "the notes show code as code");
  const tripText = await trip.textContent();
  assert.match(tripText, /phone ↔ phone: 2 of 3 values do not come back equal/, tripText);
  assert.ok(tripText.includes(toLocal), `the expressions are shown: ${tripText}`);
  assert.match(tripText, /"\+34 600 111 222" → sent "\+34 600 111 222" → back "\+34600111222"/, tripText);
  assert.match(tripText, /… and 1 more/, tripText);
  assert.equal(await trip.locator(`a[href="#/history?local_id=${customer.id}"]`).count(), 1, "the sample links to its record");
  await shot("14-plan-round-trip");
  await page.unroute("**/api/v1/syncs/CON/plan*");
  step = "transformed diff";
  const lower = "value | lower";
  const inbound = (await call("GET", "/api/v1/changes?sync=CON&direction=external_to_local&status=success&limit=100")).body.changes
    .find((c) => typeof c.origin_values?.email === "string" && typeof c.destination_values?.email === "string");
  assert.ok(inbound, "an inbound row with an email");
  await page.route("**/api/v1/config", async (route) => {
    const res = await route.fetch();
    const json = await res.json();
    const con = json.syncs.find((x) => x.code === "CON");
    const pair = con.fields.find((f) => f.local === "email");
    Object.assign(pair, { to_local: lower, reads_external: ["email"], to_external: "value", reads_local: ["email"] });
    await route.fulfill({ response: res, json });
  });
  // A fresh page: the configuration is read again.
  await page.goto(`${base}/#/change/${inbound.id}`);
  await page.reload();
  const emailRow = page.locator("table.diff tbody tr").filter({ hasText: "to_local" });
  await emailRow.waitFor();
  assert.equal(await emailRow.count(), 1, "one transformed pair");
  const [shownFrom, shownTo] = await emailRow.locator("td").allTextContents();
  assert.ok((await emailRow.locator("th").textContent()).includes(`email ↔ email (to_local ${lower})`), await emailRow.locator("th").textContent());
  assert.equal(shownFrom, inbound.origin_values.email, "what it read");
  assert.equal(shownTo, inbound.destination_values.email, "what it made");
  await shot("15-change-diff-transformed");
  await page.unroute("**/api/v1/config");
  // The configuration as it is, read again; the page has finished before the next step.
  await page.reload();
  await page.locator("table.diff tbody tr").first().waitFor();
  assert.equal(await page.locator("table.diff tbody tr").filter({ hasText: "to_local" }).count(), 0);

  // 8. The other pages. The record history offers the per-record operations: paused, the
  // record's edit does not go out; resumed, it does.
  step = "history";
  await page.goto(`${base}/#/history?local_id=${customer.id}`);
  await page.locator("ol.timeline li").first().waitFor();
  const directions = await page.locator("ol.timeline li .direction").allTextContents();
  assert.ok(directions.length === await page.locator("ol.timeline li").count(), "each history row shows its direction");
  assert.ok(directions.includes("→ out"), `the delivery shows as outbound: ${directions}`);
  await shot("08-record-history");
  step = "record operations";
  const ops = page.locator('#record-ops tr[data-sync="CON"]');
  const state = page.locator('#record-ops td[data-state="CON"]');
  assert.match(await state.textContent(), /^linked to \S+$/, "the record's state in the sync is shown");
  await ops.getByRole("button", { name: "pause" }).click();
  await page.locator(".notice").filter({ hasText: "CON:" }).waitFor();
  await eventually("the state to say paused", async () => /· paused$/.test(await state.textContent()));
  const ext = (await call("GET", `/api/v1/changes?sync=CON&local_id=${customer.id}&limit=1000`)).body.changes.find((c) => c.external_id).external_id;
  const paused = await call("PATCH", `/api/v1/models/contact/records/${customer.id}`, { name: "Edited while paused" });
  assert.equal(paused.status, 200, JSON.stringify(paused.body));
  // The delivery of the paused record's edit is settled as `skipped`, and nothing is sent.
  await eventually("the paused delivery skipped", async () =>
    (await call("GET", `/api/v1/changes?sync=CON&local_id=${customer.id}&status=skipped&limit=10`)).body.changes.length > 0);
  const there = async () => (await (await fetch(`${peer}/peer/contacts/records`)).json()).records.find((r) => r.unique_id === ext || r.id === ext);
  assert.notEqual((await there()).full_name, "Edited while paused", "a paused record is not sent");
  // The history colours each row's note by its status: the skip is a note, a failure an error.
  await page.reload();
  await page.locator('[data-note="skipped"]').first().waitFor();
  assert.equal(await page.locator('[data-note="skipped"]').first().getAttribute("class"), "note", "a skip's note is not an error");
  assert.equal(await page.locator('[data-note="failed"]').first().getAttribute("class"), "status-failed", "a failure's error is");
  await shot("13-record-paused");
  assert.match(await page.locator('#record-ops td[data-state="CON"]').textContent(), /· paused$/, "still paused after a reload");
  await ops.getByRole("button", { name: "resume" }).click();
  await page.locator(".notice").filter({ hasText: /CON: .*resumed/i }).waitFor();
  await eventually("the state to drop paused", async () => !/paused/.test(await page.locator('#record-ops td[data-state="CON"]').textContent()));
  await eventually("the resumed record sent", async () => (await there()).full_name === "Edited while paused");
  step = "configuration";
  await page.getByRole("link", { name: "Configuration" }).click();
  await page.getByRole("heading", { name: "Syncs", level: 2 }).waitFor();
  const configText = await page.locator("main").textContent();
  assert.ok(!configText.includes(adminKey) && !/rsk_/.test(configText), "no key is shown");
  assert.ok(!configText.includes("[from environment]"), "services say where they are");
  assert.match(configText, /http:\/\/127\.0\.0\.1:\d+/, "each service's scheme and host are shown");
  assert.match(configText, /[→←↔] (to external|to local|bidirectional)/, "directions have their arrows");
  await shot("09-configuration");
  step = "trees";
  await page.getByRole("link", { name: "Dropbox trees" }).click();
  await page.locator(".empty, section.card").first().waitFor();
  await shot("10-dropbox-trees");
  // A mirrored tree (the demo has no Dropbox; the server's side is tested in tests/dropbox.rs):
  // icons drawn without emoji, and an empty folder without a disclosure triangle.
  await page.route("**/api/v1/config", async (route) => {
    const res = await route.fetch();
    const json = await res.json();
    json.web_services.push({ name: "box", kind: "dropbox" });
    json.syncs.push({ code: "DBX", web_service: "box" });
    await route.fulfill({ response: res, json });
  });
  await page.route("**/api/v1/syncs/DBX/tree", (route) => route.fulfill({ json: {
    name: "/Customers", children: [
      { tag: "folder", name: "ACME", children: [{ tag: "file", name: "contract.pdf", size: 1024 }] },
      { tag: "folder", name: "Globex", children: [] },
    ] } }));
  await page.reload();
  await page.locator("details.tree").first().waitFor();
  const tree = await page.locator("main").textContent();
  assert.doesNotMatch(tree, /\p{Extended_Pictographic}/u, "no emoji in the tree");
  assert.equal(await page.locator("details.tree summary").filter({ hasText: "Globex" }).count(), 0, "an empty folder cannot be opened");
  assert.equal(await page.locator(".empty-folder").filter({ hasText: "Globex" }).count(), 1, "it says it is empty");
  assert.equal(await page.locator(".icon-folder").count(), 3, "a folder icon each (root, ACME, Globex)");
  await shot("10b-dropbox-tree");
  await page.unroute("**/api/v1/config");
  await page.unroute("**/api/v1/syncs/DBX/tree");

  assert.deepEqual(failures, [], "no script errors");
  console.log("browser tests passed; screenshots in", shots);
} catch (e) {
  await shot(`failed-${step.replace(/\W+/g, "-")}`).catch(() => {});
  console.error(`browser test failed at step "${step}":`, e);
  process.exitCode = 1;
} finally {
  await browser.close();
  demo.kill("SIGTERM");
}
