// The web view in a real browser (Debian's chromium, driven by playwright-core): sign
// in, the board, create and move a task, a change made through the API appearing live,
// the agent's stream on the task page, approving the patch. Hostile text must render as
// text. Screenshots of each step go to SHOTS. Prints one JSON line of measurements.
//
// Env: BASE (the server), EMAIL, PASSWORD, TOKEN (an API token for the outside change),
// SHOTS (a directory), KODEL_NODE_MODULES.
import { pathToFileURL } from 'node:url';
import { mkdirSync } from 'node:fs';

const { chromium } = await import(pathToFileURL(`${process.env.KODEL_NODE_MODULES}/playwright-core/index.mjs`));
const { BASE, EMAIL, PASSWORD, TOKEN, SHOTS } = process.env;
mkdirSync(SHOTS, { recursive: true });

const HOSTILE = `<script>window.__xss=1</script>"><img src=x onerror="window.__xss=2">`;
const fail = (msg) => { throw new Error(msg); };
const browser = await chromium.launch({ executablePath: '/usr/bin/chromium', headless: true });
const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
const errors = [];
page.on('pageerror', (e) => errors.push(String(e)));
// Refusals the test provokes (401, 409) are logged by the browser as failed loads; those are not errors of the page.
page.on('console', (m) => { if (m.type() === 'error' && !m.text().startsWith('Failed to load resource')) errors.push(m.text()); });
let n = 0;
const shot = async (name) => page.screenshot({ path: `${SHOTS}/${String(++n).padStart(2, '0')}-${name}.png`, fullPage: true });
const noXss = async () => {
  const x = await page.evaluate(() => window.__xss);
  if (x !== undefined) fail(`hostile text ran as script (window.__xss = ${x})`);
};
const out = {};

try {
  // Signing in.
  await page.goto(`${BASE}/`);
  if (!page.url().endsWith('/login')) fail(`not sent to sign in: ${page.url()}`);
  const csp = (await page.request.get(`${BASE}/login`)).headers()['content-security-policy'];
  if (!csp?.includes("script-src 'self'") || csp.includes('unsafe-inline')) fail(`CSP: ${csp}`);
  await shot('sign-in');
  await page.fill('input[name=email]', EMAIL);
  await page.fill('input[name=password]', 'wrong password');
  await page.click('button[type=submit]');
  await page.waitForSelector('.error');
  if (!(await page.textContent('.error')).includes('wrong email or password')) fail('a wrong password is not said');
  await page.fill('input[name=email]', EMAIL);
  await page.fill('input[name=password]', PASSWORD);
  await page.click('button[type=submit]');
  await page.waitForSelector('ul.projects a');
  const cookie = (await page.context().cookies()).find((c) => c.name === 'kodel_session');
  if (!cookie?.httpOnly || cookie.sameSite !== 'Lax') fail(`session cookie: ${JSON.stringify(cookie)}`);
  await shot('boards');

  // The board.
  await page.click('ul.projects a');
  await page.waitForSelector('[data-board]');
  const columns = await page.$$eval('.col h2', (hs) => hs.map((h) => h.firstChild.textContent.trim()));
  if (!columns.includes('Backlog') || !columns.includes('In Progress')) fail(`columns: ${columns}`);
  await shot('board');

  // On a phone the page fits the screen; the columns scroll sideways on their own.
  await page.setViewportSize({ width: 390, height: 844 });
  const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  if (overflow > 0) fail(`the board is ${overflow}px wider than a phone's screen`);
  await shot('board-on-a-phone');
  await page.setViewportSize({ width: 1280, height: 900 });

  // Create a task with a hostile title: it appears (through the live stream) as text.
  await page.fill('form.create input[name=title]', HOSTILE);
  await page.fill('form.create input[name=labels]', 'web, <b>bold</b>');
  await page.click('form.create button[type=submit]');
  const hostileCard = page.locator('.card', { hasText: 'window.__xss=1' });
  await hostileCard.waitFor({ timeout: 10000 });
  if ((await hostileCard.locator('.title').textContent()) !== HOSTILE) fail('the hostile title is not shown verbatim');
  if (await hostileCard.locator('img, script, b').count()) fail('the hostile title became markup');
  const hostileKey = await hostileCard.getAttribute('data-key');
  await noXss();

  // A change made through the API appears without a reload.
  const marker = `made-through-the-api-${Date.now()}`;
  const started = Date.now();
  const r = await fetch(`${BASE}/api/v1/orgs/acme/projects/KOD/tasks`, {
    method: 'POST', headers: { authorization: `Bearer ${TOKEN}`, 'content-type': 'application/json' }, body: JSON.stringify({ title: marker, labels: ['api'] }),
  });
  if (r.status !== 201) fail(`API create: ${r.status} ${await r.text()}`);
  await page.locator('.card', { hasText: marker }).waitFor({ timeout: 10000 });
  out.live_update_ms = Date.now() - started;
  await shot('live-api-change');

  // Filtering by #label.
  await page.fill('form.filter input', '#api');
  await page.press('form.filter input', 'Enter');
  await page.waitForURL(/q=%23api/);
  if ((await page.locator('.card').count()) !== 1) fail('#api should leave one card');
  await page.goto(page.url().split('?')[0]);

  // A refused move says where the task may go.
  const move = async (key, status) => {
    await page.click(`button[data-move="${key}"]`);
    await page.selectOption('#move-dialog select', status);
    await page.click('#move-dialog button[type=submit]');
  };
  await move(hostileKey, 'Done');
  await page.waitForSelector('#move-dialog .err:not(:empty)');
  const refusal = await page.textContent('#move-dialog .err');
  if (!refusal.includes('Ready')) fail(`a refused move does not say where it may go: ${refusal}`);
  await shot('move-refused');
  await page.click('#move-dialog [data-close]');

  // Along allowed transitions, the card follows.
  await move(hostileKey, 'Ready');
  await page.locator(`.col[data-status="Ready"] #card-${hostileKey}`).waitFor({ timeout: 10000 });
  await move(hostileKey, 'In Progress');
  await page.locator(`.col[data-status="In Progress"] #card-${hostileKey}`).waitFor({ timeout: 10000 });
  // The agent takes it: the card says so, live.
  await page.locator(`#card-${hostileKey} .run`).waitFor({ timeout: 30000 });
  await shot('moved-and-running');

  // The keyboard: "/" goes to the filter.
  await page.keyboard.press('/');
  if (!(await page.evaluate(() => document.activeElement?.name === 'q'))) fail('"/" does not focus the filter');
  await page.keyboard.press('Escape');
  await page.evaluate(() => document.activeElement?.blur());

  // The task page while the agent works: steps arrive live.
  await page.click(`#card-${hostileKey} a`);
  await page.waitForSelector('[data-task]');
  await page.evaluate(() => {
    // Layout shifts of the page around the agent's stream: its steps and live text move
    // inside their own fixed-height scroll box (as a log does), and the part that
    // follows the task's events (#side) is refreshed in place; nothing else may move.
    window.__streamShift = 0;
    const inside = (n) => document.getElementById('side').contains(n) || document.getElementById('stream').contains(n);
    new PerformanceObserver((list) => {
      for (const e of list.getEntries()) {
        if (e.sources.some((s) => s.node && !inside(s.node))) window.__streamShift += e.value;
      }
    }).observe({ type: 'layout-shift' });
    window.__appended = 0;
    new MutationObserver((ms) => { for (const m of ms) window.__appended += m.addedNodes.length; }).observe(document.getElementById('steps'), { childList: true });
  });
  await page.waitForFunction(() => window.__appended > 0, null, { timeout: 60000 });
  await shot('task-stream-live');
  // The tool call with hostile output is there, folded, and inert.
  await page.locator('#steps .step.tool', { hasText: 'bash' }).first().waitFor({ timeout: 60000 });
  const bash = page.locator('#steps .step.tool', { hasText: 'bash' }).first();
  await bash.locator('summary').click();
  const output = await bash.locator('pre').nth(1).textContent();
  if (!output.includes('<img src=x onerror=')) fail(`the tool output is not shown as text: ${output}`);
  await noXss();
  await shot('tool-output-open');
  // A failed tool call is marked.
  await page.locator('#steps .step.tool.err', { hasText: 'read_file' }).waitFor({ timeout: 60000 });

  // A comment, hostile too, appears (through the task's stream) as text.
  const comment = 'Watch out: <script>window.__xss=6</script>';
  await page.fill('form.comment textarea', comment);
  await page.click('form.comment button[type=submit]');
  await page.locator('ol.comments li .body', { hasText: 'window.__xss=6' }).waitFor({ timeout: 10000 });
  if ((await page.locator('ol.comments li .body').last().textContent()) !== comment) fail('the comment is not shown verbatim');

  // The patch appears, coloured; approving it is recorded.
  await page.locator('.artifact pre.diff .add').first().waitFor({ timeout: 90000 });
  out.steps = await page.locator('#steps .step').count();
  out.stream_layout_shift = await page.evaluate(() => window.__streamShift);
  if (out.stream_layout_shift > 0) fail(`the page shifted while the stream grew: ${out.stream_layout_shift}`);
  await shot('patch');
  const patch = page.locator('.artifact', { has: page.locator('pre.diff') }).first();
  await patch.locator('textarea[name=comment]').fill('Looks right <b>to me</b>');
  await patch.locator('button[value=approve]').click();
  await page.locator('.artifact .badge.approved').first().waitFor({ timeout: 10000 });
  await shot('approved');
  await noXss();

  // Approving moved the task to review: the reviewer's verdict and findings appear.
  await page.locator('.artifact ul.findings li').first().waitFor({ timeout: 90000 });
  const finding = await page.locator('.artifact ul.findings li').first().textContent();
  if (!finding.includes('no test covers add() <img src=x onerror=')) fail(`the finding is not shown as text: ${finding}`);
  if ((await page.locator('.artifact ul.findings .sev').first().getAttribute('class')) !== 'sev minor') fail('a made-up severity picked a style');
  await noXss();
  await shot('review-findings');
  // Rejecting the review, with a comment, is recorded too.
  const review = page.locator('.artifact', { has: page.locator('ul.findings') }).first();
  await review.locator('textarea[name=comment]').fill('Add the test first');
  await review.locator('button[value=reject]').click();
  await page.locator('.artifact', { has: page.locator('ul.findings') }).locator('.badge.rejected').first().waitFor({ timeout: 10000 });
  await shot('review-rejected');

  // Signing out ends the session.
  await Promise.all([page.waitForNavigation(), page.click('header.top button.link')]);
  if (!page.url().endsWith('/login')) fail(`signing out did not go to the sign-in page: ${page.url()}`);
  await page.goto(`${BASE}/o/acme/p/KOD`);
  if (!page.url().endsWith('/login')) fail('the board is still shown after signing out');

  if (errors.length) fail(`errors in the page: ${errors.join('; ')}`);
  out.ok = true;
  console.log(JSON.stringify(out));
} catch (e) {
  await shot('failure').catch(() => {});
  console.error(String(e.stack || e));
  process.exitCode = 1;
} finally {
  await browser.close();
}
