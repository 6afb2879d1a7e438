// Takes the dashboard screenshots in docs/img/ from a running `conclave demo` (a scripted team at
// work). Not a test: run it by hand after `cargo build -p conclave-cli`:
//
//   CONCLAVE_CLAUDE_BIN=/path/to/claude node demo-screenshots.mjs
//
// It starts the demo in a temporary folder, opens the printed dashboard link in headless
// Chromium, and shoots the page while the agents work and once they have finished.

import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
const repo = path.resolve(here, '..', '..');
const binary = path.join(repo, 'target', 'debug', 'conclave');
const docsImg = path.join(repo, 'docs', 'img');
const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'conclave-demo-shots-'));

const demo = spawn(binary, ['demo', '--dir', path.join(dir, 'project')], { stdio: ['ignore', 'ignore', 'pipe'] });
let link = null;
let finished = false;
let stderr = '';
demo.stderr.on('data', (chunk) => {
  stderr += chunk.toString();
  const match = stderr.match(/^(http:\/\/127\.0\.0\.1:\d+\/\?token=\S+)$/m);
  if (match) link = match[1];
  if (/team has finished/.test(stderr)) finished = true;
});

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
const deadline = Date.now() + 60_000;
while (!link && Date.now() < deadline) await sleep(200);
if (!link) {
  demo.kill('SIGTERM');
  throw new Error(`no dashboard link from the demo:\n${stderr}`);
}

const { chromium } = await import('playwright-core');
const browser = await chromium.launch({
  executablePath: '/usr/bin/chromium',
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking',
    '--disable-component-update', '--disable-sync', '--no-first-run', '--disable-quic'],
});
try {
  const page = await browser.newPage({ viewport: { width: 1440, height: 900 } });
  await page.goto(link);
  fs.mkdirSync(docsImg, { recursive: true });
  await sleep(9_000);
  await page.screenshot({ path: path.join(docsImg, 'demo-at-work.png'), fullPage: true });
  const until = Date.now() + 120_000;
  while (!finished && Date.now() < until) await sleep(500);
  await sleep(2_000);
  await page.screenshot({ path: path.join(docsImg, 'demo-finished.png'), fullPage: true });
  console.log(`screenshots in ${docsImg}`);
} finally {
  await browser.close();
  demo.kill('SIGTERM');
}
