// The dashboard's merge queue and overlap views (issue 11) in a real headless Chromium, against a
// real `conclave serve` over a git project with a `[merge]` table: two worktree agents' task
// branches change the same file; the page shows the overlap, and a person pauses, skips, retries
// and resumes the queue from the page until the branch lands.
//
// Run: cargo build -p conclave-cli && (cd tests/browser && npm ci && npm test)
// Env, skipping and DOCS_SCREENSHOTS=1 (docs/img/dashboard-merge-queue.png) as in
// dashboard.test.mjs.

import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, execFileSync } from 'node:child_process';
import fs from 'node:fs';
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

let server; // { child, url, token, dir }
let browser;
const tokens = {};

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

async function waitFor(what, probe, timeoutMs = 20000) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await probe();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}

function git(dir, ...args) {
  return execFileSync('git', args, {
    cwd: dir,
    env: {
      ...process.env,
      GIT_AUTHOR_NAME: 'test', GIT_AUTHOR_EMAIL: 'test@example.com',
      GIT_COMMITTER_NAME: 'test', GIT_COMMITTER_EMAIL: 'test@example.com',
    },
  }).toString();
}

/** A git project whose task branches conclave/T-1 and conclave/T-2 both change shared.txt. */
function gitProject() {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'conclave-queue-'));
  git(dir, 'init', '--quiet', '--initial-branch=main');
  execFileSync(BIN, ['init'], { cwd: dir, stdio: 'ignore' });
  fs.writeFileSync(path.join(dir, 'conclave.toml'), '[merge]\ncheck = "true"\ncheck_timeout = "1m"\n');
  fs.writeFileSync(path.join(dir, '.gitignore'), '.conclave/\n');
  fs.writeFileSync(path.join(dir, 'shared.txt'), 'one\ntwo\nthree\n');
  git(dir, 'add', '--all');
  git(dir, 'commit', '--quiet', '-m', 'start');
  for (const [task, text] of [['T-1', 'one\ntwo by alice\nthree\n'], ['T-2', 'one\ntwo\nthree by bob\n']]) {
    git(dir, 'checkout', '--quiet', '-b', `conclave/${task}`, 'main');
    fs.writeFileSync(path.join(dir, 'shared.txt'), text);
    git(dir, 'commit', '--quiet', '-am', `${task}: change shared.txt`);
  }
  git(dir, 'checkout', '--quiet', 'main');
  return dir;
}

async function startServer(dir) {
  assert.ok(fs.existsSync(BIN), `no conclave binary at ${BIN}: run cargo build -p conclave-cli first`);
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
  await waitFor('the dashboard link', () => stderr.includes(`${info.url}/?token=${token}`));
  return { child, url: info.url, token, dir };
}

before(async () => {
  if (skip) return;
  const { chromium } = await import('playwright-core');
  server = await startServer(gitProject());
  // Paused first, so that the finished task waits in the queue for the page to act on it.
  await ok('POST', '/api/queue/pause');
  for (const name of ['alice', 'bob']) {
    tokens[name] = (await ok('POST', '/api/agents', { name, isolation: 'worktree' })).token;
  }
  const first = await ok('POST', '/api/tasks', { title: 'Reword line two' });
  const second = await ok('POST', '/api/tasks', { title: 'Reword line three' });
  assert.deepEqual([first.id, second.id], ['T-1', 'T-2']);
  await ok('POST', '/api/tasks/claim', { id: 'T-1' }, tokens.alice);
  await ok('POST', '/api/tasks/claim', { id: 'T-2' }, tokens.bob);
  // Alice's edit of a lockfile on T-1, as her PostToolUse hook reports it.
  await ok('POST', '/hooks/post-tool-use', {
    session_id: 's-alice', cwd: server.dir, tool_name: 'Write',
    tool_input: { file_path: path.join(server.dir, 'Cargo.lock'), content: 'version = 4\n' },
  }, tokens.alice);
  await ok('POST', '/api/tasks/T-1/done', { summary: 'line two reworded' }, tokens.alice);
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

test('the queue view shows entries and pauses, skips, retries and resumes through the API; overlaps name the shared file', { skip, timeout: 90000 }, async () => {
  const context = await browser.newContext({ viewport: { width: 1440, height: 1000 } });
  const page = await context.newPage();
  const errors = [];
  page.on('pageerror', (error) => errors.push(String(error)));
  await page.goto(`${server.url}/?token=${server.token}`);
  await page.waitForSelector('body[data-ready="true"]');

  const entry = page.locator('#queue-entries [data-queue-entry="T-1"]');
  await entry.waitFor();
  assert.equal(await entry.getAttribute('data-state'), 'queued');
  assert.match(await entry.innerText(), /alice/);
  await page.locator('#queue-state [data-queue-paused="true"]').waitFor();

  // T-1 changed a lockfile: flagged on its entry and in the dependency list.
  await entry.locator('[data-dependency-flag]').waitFor();
  assert.match(await entry.locator('[data-dependency-flag]').getAttribute('title'), /Cargo\.lock/);
  assert.match(await page.locator('#dependency-changes [data-dependency="Cargo.lock"]').innerText(), /T-1 @alice Cargo\.lock \(lockfile, cargo\) by Write/);

  // Both open branches changed shared.txt.
  const overlap = page.locator('#overlaps [data-overlap="T-1 T-2"]');
  await overlap.waitFor();
  await overlap.locator('[data-path="shared.txt"]').waitFor();
  assert.match(await overlap.innerText(), /T-1 @alice ∩ T-2 @bob/);
  fs.mkdirSync(ARTIFACTS, { recursive: true });
  await page.locator('#merge-section').screenshot({ path: path.join(ARTIFACTS, 'merge-queue.png') });
  if (process.env.DOCS_SCREENSHOTS === '1') {
    fs.mkdirSync(DOCS_IMG, { recursive: true });
    await page.locator('#merge-section').screenshot({ path: path.join(DOCS_IMG, 'dashboard-merge-queue.png') });
  }

  // Skip: the entry leaves the queue and its task goes back to alice.
  await entry.locator('[data-queue-action="skip"]').click();
  await page.locator('#queue-entries [data-queue-entry="T-1"][data-state="skipped"]').waitFor();
  const skipped = await ok('GET', '/api/queue');
  assert.equal(skipped.entries.find((e) => e.task === 'T-1').state, 'skipped');
  assert.equal((await ok('GET', '/api/tasks/T-1')).status, 'in_progress');

  // Retry puts it back (its task waits in review again), and resuming lands it.
  await page.locator('#queue-entries [data-queue-entry="T-1"] [data-queue-action="retry"]').click();
  await page.locator('#queue-entries [data-queue-entry="T-1"][data-state="queued"]').waitFor();
  await page.locator('#queue-state [data-queue-action="resume"]').click();
  await page.locator('#queue-state [data-queue-paused="false"]').waitFor();
  assert.equal((await ok('GET', '/api/queue')).paused, false);
  await page.locator('#queue-entries [data-queue-entry="T-1"][data-state="landed"]').waitFor({ timeout: 30000 });
  assert.match(git(server.dir, 'show', 'conclave/integration:shared.txt'), /two by alice/);

  // With T-1 landed, only T-2 is open: no overlap is left.
  await waitFor('the overlap to go', async () => (await page.locator('#overlaps [data-overlap]').count()) === 0);
  // The pause button is back for the next time.
  await page.locator('#queue-state [data-queue-action="pause"]').click();
  await page.locator('#queue-state [data-queue-paused="true"]').waitFor();
  assert.deepEqual(errors, []);
  await context.close();
});
