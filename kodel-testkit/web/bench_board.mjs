// Measures the board page in headless chromium: bytes over the wire (the page and
// everything it loads), first contentful paint, and how long a task made through the
// API takes to appear on an open board. Prints one JSON line.
//
// Env: BASE, EMAIL, PASSWORD, TOKEN, PATH_ (the board's path), LOADS, CREATES, KODEL_NODE_MODULES.
import { pathToFileURL } from 'node:url';

const { chromium } = await import(pathToFileURL(`${process.env.KODEL_NODE_MODULES}/playwright-core/index.mjs`));
const { BASE, EMAIL, PASSWORD, TOKEN, PATH_ } = process.env;
const LOADS = Number(process.env.LOADS || 15);
const CREATES = Number(process.env.CREATES || 20);
const browser = await chromium.launch({ executablePath: '/usr/bin/chromium', headless: true });
// Sign in, then measure in a fresh context with that session and an empty cache, so
// the first load counts the stylesheet and the script too.
const signIn = await browser.newContext();
const login = await signIn.newPage();
await login.goto(`${BASE}/login`);
await login.fill('input[name=email]', EMAIL);
await login.fill('input[name=password]', PASSWORD);
await Promise.all([login.waitForNavigation(), login.click('button[type=submit]')]);
const context = await browser.newContext({ storageState: await signIn.storageState() });
await signIn.close();
const page = await context.newPage();

const p50 = (xs) => { const s = [...xs].sort((a, b) => a - b); return s[Math.floor((s.length - 1) / 2)]; };
const measure = () => page.evaluate(() => {
  const nav = performance.getEntriesByType('navigation')[0];
  const res = performance.getEntriesByType('resource');
  const fcp = performance.getEntriesByName('first-contentful-paint')[0];
  return {
    page_bytes: nav.transferSize,
    page_body_bytes: nav.decodedBodySize,
    all_bytes: nav.transferSize + res.reduce((n, r) => n + r.transferSize, 0),
    fcp_ms: fcp ? fcp.startTime : null,
    cards: document.querySelectorAll('.card').length,
  };
});

// The first load fetches the stylesheet and the script too; later ones have them cached.
const loads = [];
for (let i = 0; i < LOADS; i++) {
  await page.goto(`${BASE}${PATH_}`, { waitUntil: 'load' });
  await page.waitForFunction(() => performance.getEntriesByName('first-contentful-paint').length > 0);
  loads.push(await measure());
}
const first = loads[0];
const warm = loads.slice(1);

// Live: a task made through the API, until its card is on the open board (the moment
// the page inserts it, seen by a MutationObserver in the page, not by polling).
await page.evaluate(() => {
  window.__seen = {};
  new MutationObserver((ms) => {
    for (const m of ms) for (const n of m.addedNodes) if (n.classList?.contains('card')) window.__seen[n.querySelector('.title')?.textContent] = Date.now();
  }).observe(document.querySelector('[data-board]'), { childList: true, subtree: true });
});
const delays = [];
for (let i = 0; i < CREATES; i++) {
  const title = `live-${Date.now()}-${i}`;
  const started = Date.now();
  const r = await fetch(`${BASE}/api/v1/orgs/bench/projects/BEN/tasks`, {
    method: 'POST', headers: { authorization: `Bearer ${TOKEN}`, 'content-type': 'application/json' }, body: JSON.stringify({ title }),
  });
  if (r.status !== 201) throw new Error(`create: ${r.status}`);
  await page.locator('.card', { hasText: title }).waitFor({ timeout: 10000 });
  delays.push((await page.evaluate((t) => window.__seen[t], title)) - started);
}
console.log(JSON.stringify({
  cards: first.cards,
  first_load: { all_bytes: first.all_bytes, page_bytes: first.page_bytes, page_body_bytes: first.page_body_bytes, fcp_ms: first.fcp_ms },
  warm_loads: { page_bytes_p50: p50(warm.map((l) => l.page_bytes)), fcp_ms_p50: p50(warm.map((l) => l.fcp_ms)), fcp_ms_max: Math.max(...warm.map((l) => l.fcp_ms)) },
  live_update_ms: { p50: p50(delays), max: Math.max(...delays) },
}));
await browser.close();
