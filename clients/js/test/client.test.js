import { test } from 'node:test';
import assert from 'node:assert/strict';
import { checkXP, getProgress, silentExpGain } from '../src/client.js';

// A live service when the Python suite runs these (tests/clients/test_js_client.py sets them).
const URL = process.env.COUNTERS_TEST_URL;
const TOKEN = process.env.COUNTERS_TEST_TOKEN;
const live = { skip: URL ? false : 'set COUNTERS_TEST_URL and COUNTERS_TEST_TOKEN (make test does)' };

test('silentExpGain never throws: an unreachable service resolves to null', async () => {
  const refused = () => Promise.reject(new TypeError('fetch failed'));
  const award = await silentExpGain('daily_chat', null, 't', { fetch: refused, retries: 1 });
  assert.equal(award, null);
  const check = await checkXP('NEW_IMAGE', { fetch: refused, retries: 0 });
  assert.equal(check.has_sufficient_xp, false);
  assert.equal(check.subscription_url, '/subscriptions');
  assert.equal(await getProgress({ fetch: refused, retries: 0 }), null);
});

test('a retried award sends the same Idempotency-Key on every attempt', async () => {
  const seen = [];
  const flaky = async (url, init) => {
    seen.push(init.headers['Idempotency-Key']);
    if (seen.length === 1) return new Response('{"detail":"down","code":"storage_unavailable"}', { status: 503 });
    return new Response(JSON.stringify({ success: true, exp_added: 20 }), { status: 200 });
  };
  const award = await silentExpGain('daily_chat', null, 't', { fetch: flaky });
  assert.equal(award.exp_added, 20);
  assert.equal(seen.length, 2);
  assert.ok(seen[0] && seen[0] === seen[1]);
});

test('a stalled service costs a call its deadline, not one timeout per attempt', async () => {
  let attempts = 0;
  const stalled = (url, init) => new Promise((resolve, reject) => {
    attempts += 1;  // never answers; only the abort ends the attempt
    init.signal.addEventListener('abort', () => reject(new DOMException('aborted', 'AbortError')));
  });
  const started = Date.now();
  const award = await silentExpGain('daily_chat', null, 't', {
    fetch: stalled, timeoutMs: 400, deadlineMs: 1000, retries: 5,
  });
  assert.equal(award, null);
  assert.ok(attempts >= 2 && attempts <= 3, `attempts: ${attempts}`);  // not 6 x 400 ms
  assert.ok(Date.now() - started < 3000);
});

test('against the live service: an award, then the daily limit resolves to null', live, async () => {
  const options = { baseUrl: URL };
  const first = await silentExpGain('daily_chat', null, TOKEN, options);
  assert.equal(first.exp_added, 20);
  assert.equal(first.action, 'daily_chat');
  assert.equal(await silentExpGain('daily_chat', null, TOKEN, options), null);
  const created = await silentExpGain('create_character', { type: 'character', id: 'js-c1' }, TOKEN, options);
  assert.equal(created.total_exp, 50);
  const progress = await getProgress({ ...options, token: TOKEN });
  assert.equal(progress.total_exp, 50);
  assert.equal(progress.progress.level_name, 'Newbie');
  const check = await checkXP('NEW_IMAGE', { ...options, token: TOKEN });
  assert.equal(check.has_sufficient_xp, false);
  assert.ok(check.guidance.startsWith('🎮'));
});
