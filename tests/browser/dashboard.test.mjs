// The dashboard in a real browser: Debian's headless Chromium driven by playwright-core, against a
// real `conclave serve` over a temporary project seeded through the API.
//
// Run: cargo build -p conclave-cli && (cd tests/browser && npm ci && npm test)
// Env: CONCLAVE_BIN (default target/debug/conclave), CHROMIUM_BIN (default /usr/bin/chromium).
// Without Chromium the tests are skipped, except under CI=true where that is a failure.
// Screenshots go to tests/browser/artifacts/ (and to docs/img/ when DOCS_SCREENSHOTS=1).
//
// Never use `chromium --dump-dom` here: it does not return while the page's event stream is open.

import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, execFileSync } from 'node:child_process';
import fs from 'node:fs';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const ROOT = path.resolve(HERE, '../..');
const BIN = process.env.CONCLAVE_BIN || path.join(ROOT, 'target/debug/conclave');
const CHROMIUM = process.env.CHROMIUM_BIN || '/usr/bin/chromium';
const ARTIFACTS = path.join(HERE, 'artifacts');
const DOCS_IMG = path.join(ROOT, 'docs/img');
const IN_CI = process.env.CI === 'true';
const CHROMIUM_ARGS = [
  '--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking',
  '--disable-component-update', '--disable-sync', '--no-first-run', '--disable-quic',
];

const haveChromium = fs.existsSync(CHROMIUM);
if (!haveChromium && IN_CI) {
  throw new Error(`Chromium not found at ${CHROMIUM}: CI must run the browser tests (apt-get install -y chromium)`);
}
const skip = haveChromium ? false : `no Chromium at ${CHROMIUM} (apt-get install -y chromium); skipped outside CI`;

const XSS_TASK = '<img src=x onerror="window.__xssTask=1"><script>window.__xssTask=1</script> tidy the README';
const XSS_MESSAGE = 'look: <script>window.__xssMessage=1</script><img src=x onerror="window.__xssMessage=1">';

let server; // { child, url, token, dir }
let browser;
const tokens = {};

// ---- helpers ----------------------------------------------------------------------------------

async function call(method, urlPath, body, token = server.token) {
  const response = await fetch(`${server.url}${urlPath}`, {
    method,
    headers: { Authorization: `Bearer ${token}`, 'Content-Type': 'application/json' },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await response.text();
  let data;
  try { data = JSON.parse(text); } catch { data = text; }
  return { status: response.status, data };
}

async function ok(method, urlPath, body, token) {
  const { status, data } = await call(method, urlPath, body, token);
  assert.ok(status >= 200 && status < 300, `${method} ${urlPath}: ${status} ${JSON.stringify(data)}`);
  return data;
}

async function waitFor(what, probe, timeoutMs = 15000) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await probe();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}

async function startServer() {
  assert.ok(fs.existsSync(BIN), `no conclave binary at ${BIN}: run cargo build -p conclave-cli first`);
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'conclave-browser-'));
  execFileSync(BIN, ['init'], { cwd: dir, stdio: 'ignore' });
  const child = spawn(BIN, ['serve', '--listen', '127.0.0.1:0'], {
    cwd: dir, stdio: ['ignore', 'ignore', 'pipe'], env: { ...process.env, RUST_LOG: 'warn' },
  });
  let stderr = '';
  child.stderr.on('data', (chunk) => { stderr += chunk; });
  const info = await waitFor('.conclave/server.json', () => {
    if (child.exitCode !== null) throw new Error(`conclave serve exited: ${stderr}`);
    try { return JSON.parse(fs.readFileSync(path.join(dir, '.conclave/server.json'), 'utf8')); } catch { return null; }
  });
  const token = fs.readFileSync(path.join(dir, '.conclave/admin.token'), 'utf8').trim();
  // The link `conclave serve` prints on a line of its own.
  await waitFor('the dashboard link', () => stderr.split('\n').includes(`${info.url}/?token=${token}`));
  return { child, url: info.url, token, dir, stderr: () => stderr };
}

/** Agents, dependent tasks, a claim, a lease, messages and a note, all through the API. */
async function seed() {
  for (const [name, role, model] of [
    ['alice', 'backend', 'claude-sonnet-4-5'],
    ['bob', 'frontend', 'claude-sonnet-4-5'],
    ['carol', 'reviewer', 'claude-haiku-4-5'],
  ]) {
    tokens[name] = (await ok('POST', '/api/agents', { name, role, model })).token;
  }
  await ok('PATCH', '/api/agents/alice', { status: 'working', context_tokens: 84000, context_window: 200000, cost_usd: 0.42 });
  await ok('PATCH', '/api/agents/bob', { status: 'working', context_tokens: 151000, context_window: 200000, cost_usd: 1.37, restarts: 1, host: 'build-2' });
  await ok('PATCH', '/api/agents/carol', { status: 'idle', context_tokens: 12000, context_window: 200000, cost_usd: 0.05 });
  const schema = await ok('POST', '/api/tasks', { title: 'Design the storage schema', priority: 5, role: 'backend' });
  const store = await ok('POST', '/api/tasks', { title: 'Implement the store', after: [schema.id], role: 'backend' });
  await ok('POST', '/api/tasks', { title: 'HTTP API over the store', after: [store.id] });
  const page = await ok('POST', '/api/tasks', { title: 'Status page', role: 'frontend', priority: 2 });
  await ok('POST', '/api/tasks', { title: 'Review the status page', after: [page.id], role: 'reviewer' });
  await ok('POST', '/api/tasks', { title: XSS_TASK });
  await ok('POST', '/api/tasks/claim', { id: schema.id }, tokens.alice);
  await ok('POST', '/api/tasks/claim', { id: page.id }, tokens.bob);
  await ok('POST', '/api/leases', { paths: ['src/store/schema.sql'], reason: 'schema' }, tokens.alice);
  await ok('POST', '/api/leases', { paths: ['web/status/**'], reason: 'status page' }, tokens.bob);
  await ok('POST', '/api/messages', { to: 'bob', body: 'The schema lands in src/store/schema.sql; the API follows.', thread: 'schema' }, tokens.alice);
  await ok('POST', '/api/messages', { to: 'alice', body: 'Thanks, I will read tasks from /api/tasks.', thread: 'schema' }, tokens.bob);
  await ok('POST', '/api/messages', { to: 'role:reviewer', body: XSS_MESSAGE }, tokens.bob);
  await ok('POST', '/api/notes', { title: 'SQLite in WAL mode', kind: 'decision', body: 'One writer, many readers; synchronous=NORMAL.', tags: ['storage'] }, tokens.alice);
  // What the supervisor records about a running agent, when the server takes it.
  await call('POST', '/api/events', { kind: 'agent.tool', agent: 'alice', task: schema.id, data: { tool: 'Edit', input: { file_path: 'src/store/schema.sql' }, result_bytes: 412 } });
  await call('POST', '/api/events', { kind: 'agent.text', agent: 'alice', data: { text: 'The schema needs an index on tasks(status, priority).' } });
}

async function newPage(context) {
  const page = await context.newPage();
  page.errors = [];
  page.on('pageerror', (error) => page.errors.push(String(error)));
  page.on('console', (message) => { if (message.type() === 'error') page.errors.push(message.text()); });
  return page;
}

async function loggedInPage() {
  const context = await browser.newContext({ viewport: { width: 1440, height: 900 } });
  const page = await newPage(context);
  await page.goto(`${server.url}/?token=${server.token}`);
  await page.waitForSelector('body[data-ready="true"]');
  return page;
}

async function shoot(page, name, options = {}) {
  fs.mkdirSync(ARTIFACTS, { recursive: true });
  await page.screenshot({ path: path.join(ARTIFACTS, `${name}.png`), ...options });
  if (process.env.DOCS_SCREENSHOTS === '1') {
    fs.mkdirSync(DOCS_IMG, { recursive: true });
    await page.screenshot({ path: path.join(DOCS_IMG, `dashboard-${name}.png`), ...options });
  }
}

// ---- setup ------------------------------------------------------------------------------------

before(async () => {
  if (skip) return;
  const { chromium } = await import('playwright-core');
  server = await startServer();
  await seed();
  browser = await chromium.launch({ executablePath: CHROMIUM, headless: true, args: CHROMIUM_ARGS });
});

after(async () => {
  if (browser) await browser.close();
  if (server) {
    server.child.kill('SIGINT');
    await new Promise((resolve) => {
      const timer = setTimeout(() => { server.child.kill('SIGKILL'); resolve(); }, 5000);
      server.child.on('exit', () => { clearTimeout(timer); resolve(); });
    });
    fs.rmSync(server.dir, { recursive: true, force: true });
  }
});

// ---- tests ------------------------------------------------------------------------------------

test('the token link logs in with a strict HttpOnly cookie and the page shows agents and tasks', { skip, timeout: 60000 }, async () => {
  const page = await loggedInPage();
  assert.equal(page.url(), `${server.url}/`, 'the token is dropped from the address');
  const [cookie] = await page.context().cookies(server.url);
  assert.ok(cookie, 'a session cookie is set');
  assert.equal(cookie.httpOnly, true);
  assert.equal(cookie.sameSite, 'Strict');
  assert.equal(cookie.path, '/');
  assert.ok(!cookie.value.includes(server.token));
  assert.equal(await page.evaluate(() => document.cookie), '', 'scripts cannot read the cookie');

  for (const name of ['alice', 'bob', 'carol']) {
    await page.locator(`[data-agent="${name}"]`).waitFor();
  }
  const alice = page.locator('[data-agent="alice"]');
  await assert.doesNotReject(alice.getByText('T-1 Design the storage schema').waitFor());
  // The same figure as `conclave status` prints (context_figure in the CLI's commands/agent.rs).
  assert.match(await alice.innerText(), /context 42% \(84k \/ 200k\)/);
  assert.match(await page.locator('[data-agent="bob"]').innerText(), /1 restarts/);
  // Where an agent runs (docs/scale-out.md); one with no host reported says nothing of it.
  assert.match(await page.locator('[data-agent="bob"] [data-host]').innerText(), /on build-2/);
  assert.equal(await alice.locator('[data-host]').count(), 0);
  await page.locator('[data-column="working"] [data-task="T-1"]').waitFor();
  assert.match(await page.locator('[data-column="pending"] [data-task="T-2"]').innerText(), /after T-1/);
  await page.locator('[data-task="T-1"]').getByText('blocks T-2').waitFor();
  await page.locator('#leases [data-path="src/store/schema.sql"]').getByText('alice').waitFor();
  await page.locator('[data-thread="schema"]').getByText('The schema lands in').waitFor();
  await page.locator('[data-note]').getByText('SQLite in WAL mode').waitFor();
  await page.locator('#timeline [data-kind="task.claimed"]').first().waitFor();
  await shoot(page, 'overview', { fullPage: true });
  assert.deepEqual(page.errors, []);
  await page.context().close();
});

test('events created through the API appear without a reload', { skip, timeout: 60000 }, async () => {
  const page = await loggedInPage();
  await page.locator('#conn[data-state="live"]').waitFor();
  await page.evaluate(() => { window.__sameDocument = true; });
  const task = await ok('POST', '/api/tasks', { title: 'Added while the page was open', after: ['T-4'] });
  await page.locator(`[data-column="pending"] [data-task="${task.id}"]`).getByText('Added while the page was open').waitFor();
  await page.locator('#timeline li[data-kind="task.created"]').first().getByText(task.id).waitFor();
  await ok('POST', '/api/leases', { paths: ['src/api/**'] }, tokens.carol);
  await page.locator('#leases [data-path="src/api/**"]').waitFor();
  await ok('POST', '/api/messages', { to: 'alice', body: 'live: ping from carol' }, tokens.carol);
  await page.locator('.message-body').getByText('live: ping from carol').waitFor();

  // An agent's page follows its activity live.
  await page.locator('[data-agent="alice"]').click();
  await page.locator('#drawer:not([hidden]) #agent-header').getByText('backend').waitFor();
  const recorded = await call('POST', '/api/events', { kind: 'agent.tool', agent: 'alice', data: { tool: 'Bash', input: { command: 'cargo test -p store' }, result_bytes: 2048 } });
  if (recorded.status === 201) {
    await page.locator('#drawer .stream li[data-kind="agent.tool"]').getByText('cargo test -p store').waitFor();
  } else {
    // The supervisor's event endpoint is not there yet: the agent's own actions show instead.
    await ok('POST', '/api/tasks/T-1/status', { status: 'in_progress' }, tokens.alice);
    await page.locator('#drawer .stream li[data-kind^="task."]').first().waitFor();
  }
  await shoot(page, 'agent');
  assert.equal(await page.evaluate(() => window.__sameDocument), true, 'the page was not reloaded');
  assert.deepEqual(page.errors, []);
  await page.context().close();
});

test('a message sent from the page reaches the agent\'s inbox', { skip, timeout: 60000 }, async () => {
  const page = await loggedInPage();
  const form = page.locator('#compose');
  await form.locator('input[name="to"]').fill('carol');
  await form.locator('textarea[name="body"]').fill('Please review T-4 when it is ready.');
  await form.locator('button[type="submit"]').click();
  await page.locator('#toast').getByText('message carol: done').waitFor();
  const inbox = await ok('GET', '/api/inbox', undefined, tokens.carol);
  const sent = inbox.messages.find((m) => m.body === 'Please review T-4 when it is ready.');
  assert.ok(sent, JSON.stringify(inbox));
  assert.equal(sent.sender, 'admin');
  // And the event log names the person (admin) as the actor.
  const { events } = await ok('GET', '/api/events?kind=message.sent&desc=true&limit=5');
  assert.ok(events.some((e) => e.actor === 'admin'), JSON.stringify(events));

  // Task actions go through the same API: reprioritize and cancel from the task panel.
  await page.locator('[data-task="T-3"]').click();
  await page.locator('#drawer').getByRole('button', { name: 'priority +1' }).click();
  await waitFor('T-3 at priority 1', async () => (await ok('GET', '/api/tasks/T-3')).priority === 1);
  await shoot(page, 'task');
  await page.locator('#drawer').getByRole('button', { name: 'Cancel task' }).click();
  await waitFor('T-3 cancelled', async () => (await ok('GET', '/api/tasks/T-3')).status === 'cancelled');
  await page.locator('[data-column="finished"] [data-task="T-3"]').waitFor();

  // Edit a task, assign one, release a lease and pause an agent, all from the page.
  await page.locator('[data-task="T-5"]').click();
  const edit = page.locator('#drawer form.edit-task');
  await edit.locator('input[name="title"]').fill('Review the status page, accessibility too');
  await edit.getByRole('button', { name: 'Save' }).click();
  await waitFor('T-5 renamed', async () => (await ok('GET', '/api/tasks/T-5')).title === 'Review the status page, accessibility too');
  await page.locator('[data-task="T-6"]').click();
  await page.locator('#drawer select[name="agent"]').selectOption('carol');
  await page.locator('#drawer').getByRole('button', { name: 'Assign' }).click();
  await waitFor('T-6 assigned to carol', async () => (await ok('GET', '/api/tasks/T-6')).assignee === 'carol');
  await page.locator('#drawer-close').click();
  await page.locator('#leases [data-path="web/status/**"] button').click();
  await waitFor('the lease released', async () => !(await ok('GET', '/api/leases')).leases.some((l) => l.path === 'web/status/**'));
  await page.locator('#leases [data-path="web/status/**"]').waitFor({ state: 'detached' });
  await page.locator('[data-agent="carol"] button[data-action="pause"]').click();
  await waitFor('a pause request for carol', async () => {
    const { events } = await ok('GET', '/api/events?kind=agent.control&agent=carol');
    return events.some((e) => e.actor === 'admin' && e.data.action === 'pause');
  });
  assert.deepEqual(page.errors, []);
  await page.context().close();
});

test('without the token, and from another origin, requests are refused', { skip, timeout: 60000 }, async () => {
  // No token: the page says which link to open, and the API answers 401.
  const stranger = await browser.newContext();
  const page = await newPage(stranger);
  const response = await page.goto(`${server.url}/`);
  assert.equal(response.status(), 401);
  await page.getByText('conclave serve').first().waitFor();
  const wrong = await page.goto(`${server.url}/?token=cva_not_the_token`);
  assert.equal(wrong.status(), 401);
  assert.deepEqual(await stranger.cookies(server.url), []);
  await shoot(page, 'login');
  const api = await page.evaluate(async () => (await fetch('/api/status')).status);
  assert.equal(api, 401);
  await stranger.close();

  // Logged in, then lured to a page on another origin (another port of the same host is the
  // same *site*, so the SameSite cookie is sent: only the origin check stands in the way).
  const evil = http.createServer((request, reply) => {
    reply.setHeader('Content-Type', 'text/html');
    reply.end(`<!doctype html><body>
      <form id="f" method="POST" action="${server.url}/api/messages" enctype="text/plain">
        <input name='{"to":"carol","body":"csrf form","x":"' value='"}'></form>
      <script>
        window.results = {};
        (async () => {
          try {
            await fetch('${server.url}/api/messages', { method: 'POST', mode: 'no-cors', credentials: 'include',
              headers: { 'Content-Type': 'text/plain' }, body: JSON.stringify({ to: 'carol', body: 'csrf no-cors' }) });
            window.results.noCors = 'sent';
          } catch (e) { window.results.noCors = 'blocked'; }
          try {
            const r = await fetch('${server.url}/api/messages', { method: 'POST', credentials: 'include',
              headers: { 'Content-Type': 'application/json', 'X-Conclave-Csrf': '1' }, body: JSON.stringify({ to: 'carol', body: 'csrf cors' }) });
            window.results.cors = r.status;
          } catch (e) { window.results.cors = 'blocked'; }
          window.results.done = true;
        })();
      </script></body>`);
  });
  await new Promise((resolve) => evil.listen(0, '127.0.0.1', resolve));
  const evilUrl = `http://127.0.0.1:${evil.address().port}/`;
  try {
    const victim = await loggedInPage();
    await victim.goto(evilUrl);
    await victim.waitForFunction(() => window.results && window.results.done);
    const results = await victim.evaluate(() => window.results);
    assert.equal(results.cors, 'blocked', 'no CORS grant: the preflighted request never leaves');
    await Promise.all([victim.waitForNavigation(), victim.evaluate(() => document.getElementById('f').submit())]);
    assert.match(await victim.content(), /cross-site request refused/);
    const inbox = await ok('GET', '/api/inbox', undefined, tokens.carol);
    const forged = inbox.messages.filter((m) => m.body.startsWith('csrf'));
    assert.deepEqual(forged, [], 'no cross-origin request changed anything');
    await victim.context().close();
  } finally {
    evil.close();
  }
});

test('a stored <script> is shown as text and does not run', { skip, timeout: 60000 }, async () => {
  const page = await loggedInPage();
  await page.locator('.message-body').getByText('<script>window.__xssMessage=1</script>', { exact: false }).waitFor();
  await page.locator('.task-title').getByText('<script>window.__xssTask=1</script>', { exact: false }).waitFor();
  // Opening the task shows it in the panel too, still as text.
  await page.locator('[data-task="T-6"]').click();
  await page.locator('#drawer h2').getByText('tidy the README').waitFor();
  await page.waitForTimeout(300);
  const flags = await page.evaluate(() => [window.__xssTask, window.__xssMessage]);
  assert.deepEqual(flags, [undefined, undefined]);
  assert.equal(await page.locator('#board script, #threads script, #drawer script, main img').count(), 0);
  await page.context().close();
});

test('the timeline filters by agent, task and kind and scrolls back through the whole log', { skip, timeout: 90000 }, async () => {
  // Enough history for several pages of 100.
  for (let i = 0; i < 240; i += 1) {
    await ok('POST', '/api/messages', { to: 'alice', body: `history ${i}`, thread: 'history' }, tokens.carol);
  }
  const page = await loggedInPage();
  const timeline = page.locator('#timeline');
  await timeline.locator('li').nth(99).waitFor();
  // Scroll until the first event of the log is loaded.
  await waitFor('event #1 in the timeline', async () => {
    await page.locator('#timeline-end').scrollIntoViewIfNeeded();
    return (await timeline.locator('li[data-seq="1"]').count()) === 1;
  }, 30000);
  await page.locator('#timeline-end').getByText('the beginning of the log').waitFor();
  const seqs = await timeline.locator('li').evaluateAll((items) => items.map((li) => Number(li.dataset.seq)));
  assert.deepEqual(seqs, [...seqs].sort((a, b) => b - a), 'newest first');
  assert.equal(new Set(seqs).size, seqs.length, 'no event twice');

  // By kind (a prefix) and agent.
  const filter = page.locator('#timeline-filter');
  await filter.locator('input[name="kind"]').fill('lease.');
  await filter.locator('select[name="agent"]').selectOption('alice');
  await waitFor('only alice\'s lease events', async () => {
    const kinds = await timeline.locator('li').evaluateAll((items) => items.map((li) => li.dataset.kind));
    return kinds.length > 0 && kinds.every((k) => k.startsWith('lease.'));
  });
  assert.match(await timeline.innerText(), /src\/store\/schema\.sql/);
  assert.doesNotMatch(await timeline.innerText(), /web\/status/);
  // By task; a live event that matches shows up, one that does not stays out.
  await filter.locator('input[name="kind"]').fill('');
  await filter.locator('select[name="agent"]').selectOption('');
  await filter.locator('input[name="task"]').fill('T-4');
  await filter.locator('button[type="submit"]').click();
  await timeline.locator('li[data-kind="task.claimed"]').waitFor();
  await ok('PATCH', '/api/tasks/T-4', { priority: 3 });
  await ok('PATCH', '/api/tasks/T-2', { priority: 1 });
  await timeline.locator('li[data-kind="task.edited"]').first().waitFor();
  const tasks = await timeline.locator('li .task-id').allInnerTexts();
  assert.ok(tasks.every((t) => t.trim() === 'T-4'), JSON.stringify(tasks));
  assert.deepEqual(page.errors, []);
  await page.context().close();
});

test('what went wrong shows at once: a failed tool call, an alert, a blocked task\'s reason', { skip, timeout: 60000 }, async () => {
  const page = await loggedInPage();
  await page.locator('#conn[data-state="live"]').waitFor();
  // A failed tool call, as the supervisor records it from a tool_result with is_error.
  await ok('POST', '/api/events', {
    kind: 'agent.tool', agent: 'bob',
    data: { tool: 'Write', input: { file_path: 'web/status/index.html' }, result_bytes: 58, is_error: true, error: 'File has not been read yet. Read it first before writing to it.' },
  });
  const row = page.locator('#timeline li.failed[data-kind="agent.tool"]').first();
  await row.getByText('FAILED: File has not been read yet', { exact: false }).waitFor();
  assert.equal(await row.locator('.actor').innerText(), 'bob', 'the row names the agent, not the admin who recorded it');
  await page.locator('[data-agent="bob"] .last-action.failed').waitFor();
  await page.locator('[data-agent="bob"]').click();
  const failed = page.locator('#drawer .stream li[data-kind="agent.tool"] .tool.failed').first();
  await failed.locator('.tool-error').getByText('File has not been read yet', { exact: false }).waitFor();
  assert.match(await failed.innerText(), /FAILED/);
  await page.locator('#drawer-close').click();

  // An alert: a red banner on the agent's card and a line in the strip, dismissable.
  await ok('POST', '/api/events', { kind: 'agent.alert', agent: 'carol', data: { cause: 'authentication', message: 'Not logged in · Please run /login' } });
  const banner = page.locator('[data-agent="carol"] .banner');
  await banner.getByText('Not logged in', { exact: false }).waitFor();
  assert.match(await banner.innerText(), /authentication/);
  const strip = page.locator('#alerts');
  await strip.locator('.alert').getByText('Not logged in · Please run /login').waitFor();
  assert.equal(await strip.locator('.alert b').first().innerText(), 'carol');
  const status = await ok('GET', '/api/status');
  assert.equal(status.alerts, 1, 'conclave status counts the alert');

  // A task its holder marked blocked says why on its card and in the task panel.
  await ok('POST', '/api/tasks/T-4/status', { status: 'blocked', note: 'needs the HTTP API from alice first' }, tokens.bob);
  const card = page.locator('[data-column="blocked"] [data-task="T-4"]');
  await card.locator('.blocked-reason').getByText('needs the HTTP API from alice first', { exact: false }).waitFor();
  assert.match(await card.innerText(), /role frontend/, 'the card shows the role the task needs');
  await card.click();
  await page.locator('#task-info dd.blocked-reason').getByText('needs the HTTP API from alice first').waitFor();
  await page.locator('#drawer-close').click();
  await shoot(page, 'alerts');

  await strip.locator('.alert button.dismiss').first().click();
  await banner.waitFor({ state: 'detached' });
  assert.equal(await strip.isHidden(), true, 'no alert left to show');
  assert.deepEqual(page.errors, []);
  await page.context().close();
});

test('what is waiting says so: an inbox wait, and an agent never started', { skip, timeout: 60000 }, async () => {
  const page = await loggedInPage();
  await page.locator('#conn[data-state="live"]').waitFor();
  const dave = await ok('POST', '/api/agents', { name: 'dave', role: 'tester' });
  const badge = page.locator('[data-agent="dave"] .badge').first();
  await badge.getByText('not started').waitFor();
  assert.equal((await ok('GET', '/api/agents/dave')).status, 'offline', 'registered is not idle');

  // Carol reads everything, then waits in her inbox: the card says so, and for whom.
  const inbox = await ok('GET', '/api/inbox', undefined, tokens.carol);
  await ok('POST', '/api/inbox/ack', { ids: inbox.messages.map((m) => m.id) }, tokens.carol);
  await ok('POST', '/api/messages', { to: 'alice', body: 'Is the API ready for review?', thread: 'review' }, tokens.carol);
  const waiting = call('GET', '/api/inbox?wait=30', undefined, tokens.carol);
  const line = page.locator('[data-agent="carol"] .waiting');
  await line.getByText('waiting for a reply from alice since', { exact: false }).waitFor();
  await shoot(page, 'waiting');
  await ok('POST', '/api/messages', { to: 'carol', body: 'Yes, go ahead.', thread: 'review' }, tokens.alice);
  assert.equal((await waiting).status, 200);
  await line.waitFor({ state: 'detached' });
  assert.notEqual((await ok('GET', '/api/agents/carol')).status, 'waiting');
  // Alice answered in the thread: carol's question counts as read for her.
  const question = (await ok('GET', '/api/messages?thread=review')).messages.find((m) => m.sender === 'carol');
  assert.ok(question.deliveries.every((d) => d.acked_at), JSON.stringify(question));
  // Dave's first request makes it idle.
  await ok('GET', '/api/status', undefined, dave.token);
  await badge.getByText('idle').waitFor();
  assert.deepEqual(page.errors, []);
  await page.context().close();
});

test('the board fits a 900 px wide window', { skip, timeout: 60000 }, async () => {
  const context = await browser.newContext({ viewport: { width: 900, height: 900 } });
  const page = await newPage(context);
  await page.goto(`${server.url}/?token=${server.token}`);
  await page.waitForSelector('body[data-ready="true"]');
  await page.locator('[data-task="T-1"]').waitFor();
  const widths = await page.evaluate(() => ({
    page: document.documentElement.scrollWidth,
    board: [document.getElementById('board').scrollWidth, document.getElementById('board').clientWidth],
  }));
  assert.ok(widths.page <= 900, `the page scrolls sideways: ${JSON.stringify(widths)}`);
  assert.ok(widths.board[0] <= widths.board[1], `the board scrolls sideways: ${JSON.stringify(widths)}`);
  await shoot(page, 'narrow', { fullPage: true });
  assert.deepEqual(page.errors, []);
  await context.close();
});

test('the header says when the team has stalled, then finished', { skip, timeout: 60000 }, async () => {
  const page = await loggedInPage();
  await page.locator('#conn[data-state="live"]').waitFor();
  const outcome = page.locator('#outcome');
  assert.equal(await outcome.isHidden(), true, 'agents at work: no outcome yet');
  for (const name of ['alice', 'bob', 'carol', 'dave']) await ok('PATCH', `/api/agents/${name}`, { status: 'idle' });
  await page.locator('#outcome[data-state="stalled"]').getByText('stalled:', { exact: false }).waitFor();
  assert.match(await outcome.innerText(), /1 blocked/);
  const { tasks } = await ok('GET', '/api/tasks');
  for (const task of tasks.filter((t) => !['done', 'cancelled', 'failed'].includes(t.status))) {
    await ok('POST', `/api/tasks/${task.id}/cancel`, { reason: 'the test is over' });
  }
  await page.locator('#outcome[data-state="finished"]').getByText('finished', { exact: false }).waitFor();
  assert.deepEqual(page.errors, []);
  await page.context().close();
});

test('each card says what coordination costs, and past comparisons open with their report and charts', { skip, timeout: 60000 }, async () => {
  await ok('PATCH', '/api/agents/carol', {
    coordination: {
      model_calls: 12, input_tokens: 387000, output_tokens: 900, cache_read_tokens: 0, cache_creation_tokens: 0,
      definitions_tokens: 12000, tool_tokens: 0, injected_tokens: 0, handoff_tokens: 0, chars_per_token: 4,
    },
  });
  // What `conclave compare` leaves in the project's .conclave/compare/ folder.
  const name = 'compare-20261201-021500';
  const folder = path.join(server.dir, '.conclave/compare', name);
  fs.mkdirSync(folder, { recursive: true });
  fs.writeFileSync(path.join(folder, `${name}.json`), JSON.stringify({
    name, started_at: '2026-12-01T02:15:00Z', scripted: true, ways: ['single', 'team'],
    runs: [{ way: 'single', check_passed: true }, { way: 'team', check_passed: false }],
  }));
  fs.writeFileSync(path.join(folder, 'report.md'), `# Comparison ${name}\n\n> **SCRIPTED: the model turns were played by the stand-in.**\n`);
  fs.writeFileSync(path.join(folder, 'cost_usd.svg'), '<svg xmlns="http://www.w3.org/2000/svg" width="40" height="20"><rect width="40" height="20" fill="#468"/></svg>');

  const page = await loggedInPage();
  await page.locator('[data-agent="carol"] [data-coordination]').getByText('coordination: 3.1 % of input, ≈ 12 k tokens').waitFor();
  await page.locator('[data-agent="alice"] [data-coordination]').getByText('coordination: not measured yet').waitFor();
  const entry = page.locator(`[data-comparison="${name}"]`);
  await entry.getByText('single, team · 1 of 2 passed the check', { exact: false }).waitFor();
  await entry.locator('.badge.scripted').waitFor();
  await entry.getByRole('button', { name }).click();
  await entry.locator('pre').getByText('SCRIPTED', { exact: false }).waitFor();
  const chart = entry.locator('img[alt="cost_usd.svg"]');
  await chart.waitFor();
  await page.waitForFunction((n) => {
    const img = document.querySelector(`[data-comparison="${n}"] img`);
    return img && img.complete && img.naturalWidth > 0;
  }, name);
  // A name outside the compare folders is refused.
  assert.equal((await call('GET', '/api/comparisons/..%2F..%2Fadmin.token/report.md')).status, 404);
  assert.deepEqual(page.errors, []);
  await page.context().close();
});
