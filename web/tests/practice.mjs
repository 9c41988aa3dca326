// Practice in headless Chromium, keyboard only: pick a scenario, play it to failure and to
// success, read the coach's tip on a message and ask for a rewrite, try a moment again and
// compare, turn the coach off, and read the progress page with its chart, at desktop and phone
// widths, with no JavaScript errors.
// Run by crates/cli/tests/web.rs with RAPPORT_URL, CHROMIUM and SCREENSHOTS set; the server
// offers two short test scenarios: `one-line` (lost after one message) and `open-question`
// (won by one open question).
import { chromium } from 'playwright-core';
import assert from 'node:assert/strict';
import path from 'node:path';

const url = process.env.RAPPORT_URL;
const shots = process.env.SCREENSHOTS;
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update', '--disable-sync', '--no-first-run'],
});
const REPLY = 240_000;
try {
  const page = await browser.newPage({ viewport: { width: 1200, height: 800 } });
  const errors = [];
  page.on('pageerror', (e) => errors.push(String(e)));
  await page.goto(url);

  // The picker offers the scenarios beside free chat; nothing only the persona knows is shown.
  await page.locator('#scenario-list .scenario').first().waitFor();
  assert.equal(await page.locator('#scenario-list .scenario').count(), 3);
  assert.doesNotMatch(await page.locator('#scenario-list').innerText(), /silver lantern/i);

  // Keyboard only: every control is reached by focus and pressed with Enter (or Space).
  const press = async (locator) => { await locator.focus(); await page.keyboard.press('Enter'); };
  const replies = () => page.locator('#messages .bubble.assistant').count();
  const send = async (text) => {
    const before = await replies();
    await page.locator('#composer-input').focus();
    await page.keyboard.insertText(text);
    await page.keyboard.press('Enter');
    await page.waitForFunction((n) => document.querySelectorAll('#messages .bubble.assistant').length === n + 1 && !document.getElementById('pending'), before, { timeout: REPLY });
  };
  await press(page.locator('[data-scenario="one-line"] button[data-level="easy"]'));
  await page.locator('#scenario-banner:not([hidden])').waitFor();
  assert.match(await page.locator('#scenario-banner').innerText(), /Say hello\./);
  assert.match(await page.locator('#scenario-banner').innerText(), /message 0 of 1/);

  // One message: the reply, then the tip on the message, then the debrief (out of messages).
  const first = 'Hi Margot! Do you like weddings?';
  await send(first);
  await page.locator('#messages .bubble.user .msg-tip').waitFor();
  const quote = await page.locator('#messages .bubble.user .msg-tip q').innerText();
  assert.ok(first.includes(quote), `the tip quotes the message (${quote})`);
  await page.locator('#debrief:not([hidden])').waitFor();
  assert.match(await page.locator('#debrief h3').innerText(), /goal not reached/);
  assert.ok(await page.locator('#debrief .debrief-lines li').count() >= 1);
  assert.ok(await page.locator('#composer').isHidden(), 'a finished scenario takes no more messages');

  // The rewrite, after the reply: a suggestion, or the reason there is none.
  const rewriteButton = page.locator('#messages .bubble.user .rewrite-button');
  if (await rewriteButton.count()) {
    await press(rewriteButton);
    await page.waitForFunction(() => /^(Try: |No rewrite)/.test(document.querySelector('#messages .bubble.user .rewrite').innerText), null, { timeout: REPLY });
  }
  await page.screenshot({ path: path.join(shots, 'scenario-debrief.png'), fullPage: true });

  // Try that again: a branch with the old message ready to change; the original is kept.
  await press(page.locator('#messages .bubble.user .retry'));
  await page.locator('#branch-bar:not([hidden])').waitFor();
  assert.equal(await page.locator('#composer-input').inputValue(), first, 'the old message, ready to be changed');
  await page.locator('#composer-input').fill('');
  await send('Hello Margot, what has been the best moment of the weekend so far?');
  await press(page.locator('#branch-bar button', { hasText: 'Compare' }));
  await page.locator('#compare .compare-side').nth(1).waitFor();
  assert.equal(await page.locator('#compare .compare-side').count(), 2);
  assert.match(await page.locator('#compare .compare-side').nth(0).innerText(), /Do you like weddings\?/);
  assert.match(await page.locator('#compare .compare-side').nth(1).innerText(), /best moment/);

  // Played to success: one open question wins `open-question`.
  await press(page.locator('#new-chat'));
  await press(page.locator('[data-scenario="open-question"] button[data-level="easy"]'));
  await page.locator('#scenario-banner:not([hidden])').waitFor();
  await send('What do you love most about organising a weekend like this?');
  await page.locator('#debrief h3.succeeded').waitFor();
  assert.match(await page.locator('#debrief h3').innerText(), /Goal reached/);

  // The coach can be switched off: the tips go.
  assert.ok(await page.locator('#messages .msg-tip').count() >= 1);
  await page.locator('#coach-on').focus();
  await page.keyboard.press('Space');
  assert.equal(await page.locator('#messages .msg-tip').count(), 0);
  await page.keyboard.press('Space');
  assert.ok(await page.locator('#messages .msg-tip').count() >= 1, 'and come back');

  // Progress: a chart of the skills over the conversations, what to work on, the outcomes.
  await press(page.locator('#show-progress'));
  await page.locator('#progress-chart svg').waitFor();
  assert.ok(await page.locator('#progress-chart svg circle').count() >= 2, 'one point per measured conversation and skill');
  assert.match(await page.locator('#progress-summary').innerText(), /2 conversations; scenarios: 2 played, 1 goal reached/);
  // How far each score can be trusted, from the labelled messages.
  await press(page.locator('.progress-trust-box summary'));
  assert.ok(await page.locator('#progress-trust li').count() >= 4, 'a trust line per skill');
  assert.match(await page.locator('#progress-trust').innerText(), /agrees with a person's reading on \d+% of \d+ messages/);
  await page.screenshot({ path: path.join(shots, 'progress.png'), fullPage: true });

  // Phone width: the progress page and a scenario fit without sideways scrolling.
  await page.setViewportSize({ width: 390, height: 844 });
  await page.waitForTimeout(500);
  const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  assert.ok(overflow <= 1, `no sideways scrolling on a phone (${overflow}px)`);
  await page.screenshot({ path: path.join(shots, 'progress-phone.png') });
  // …and so does a finished scenario with its banner and debrief.
  await page.evaluate(() => { history.replaceState(null, '', '#'); });
  await page.reload();
  await page.locator('#debrief:not([hidden])').waitFor();
  const overflow2 = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  assert.ok(overflow2 <= 1, `no sideways scrolling in a scenario on a phone (${overflow2}px)`);
  await page.screenshot({ path: path.join(shots, 'scenario-phone.png'), fullPage: true });

  assert.deepEqual(errors, [], 'no JavaScript errors');
  console.log('PASS');
} finally {
  await browser.close();
}
