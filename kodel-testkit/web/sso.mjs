// Single sign-on in a real browser against the test OpenID provider (oidc_provider.mjs).
//
// MODE=web: from Kodel's sign-in page through the provider's login and consent, back to
//   Kodel signed in; prints {"email": <shown in the header>, "orgs": [...]}.
// MODE=device: opens START (the device flow's verification URL with its code), confirms,
//   signs in and consents at the provider, until it says the sign-in succeeded.
//
// Env: MODE, BASE (Kodel) or START, LOGIN, PASSWORD, SHOTS, KODEL_NODE_MODULES.
import { pathToFileURL } from 'node:url';
import { mkdirSync } from 'node:fs';

const { chromium } = await import(pathToFileURL(`${process.env.KODEL_NODE_MODULES}/playwright-core/index.mjs`));
const { MODE, BASE, START, LOGIN, PASSWORD, SHOTS } = process.env;
mkdirSync(SHOTS, { recursive: true });
const browser = await chromium.launch({ executablePath: '/usr/bin/chromium', headless: true });
const page = await browser.newPage();
let n = 0;
const shot = (name) => page.screenshot({ path: `${SHOTS}/${MODE}-${String(++n).padStart(2, '0')}-${name}.png`, fullPage: true });

// One step at the provider: whatever page it shows, do what a person would.
async function atProvider() {
  if (await page.locator('input[name=login]').count()) {
    await shot('provider-login');
    await page.fill('input[name=login]', LOGIN);
    await page.fill('input[name=password]', PASSWORD);
    await Promise.all([page.waitForNavigation(), page.click('button[type=submit]')]);
  } else if (await page.locator('button[autofocus], button[type=submit]').count()) {
    await shot('provider-confirm');
    await Promise.all([page.waitForNavigation(), page.locator('button[autofocus], button[type=submit]').first().click()]);
  } else {
    throw new Error(`nothing to do at ${page.url()}: ${await page.textContent('body')}`);
  }
}

try {
  if (MODE === 'web') {
    await page.goto(`${BASE}/login`);
    await shot('kodel-sign-in');
    await Promise.all([page.waitForNavigation(), page.click('a.button[href="/sso/start"]')]);
    for (let i = 0; i < 6 && !page.url().startsWith(BASE); i++) await atProvider();
    if (!page.url().startsWith(BASE)) throw new Error(`not back at Kodel: ${page.url()}`);
    await page.waitForSelector('header.top .who');
    await shot('kodel-signed-in');
    const email = await page.textContent('header.top .who');
    const orgs = await page.$$eval('section.org h2 .dim', (s) => s.map((x) => x.textContent));
    console.log(JSON.stringify({ email, orgs, url: page.url() }));
  } else {
    await page.goto(START);
    for (let i = 0; i < 6; i++) {
      if ((await page.title()) === 'Sign-in Success') break;
      await atProvider();
    }
    await shot('provider-done');
    if ((await page.title()) !== 'Sign-in Success') throw new Error(`the device sign-in did not finish: ${await page.textContent('body')}`);
    console.log(JSON.stringify({ done: true }));
  }
} catch (e) {
  await shot('failure').catch(() => {});
  console.error(String(e.stack || e));
  process.exitCode = 1;
} finally {
  await browser.close();
}
