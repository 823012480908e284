import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  DailyLimitReached, IdempotencyKeyReused, Unauthorized, Unavailable, award, checkXP, getProgress,
  silentExpGain,
} from '../src/index.js';

// A live service when the Python suite runs these (tests/clients/test_js_client.py sets them).
// They run in order, as one user: each one's totals follow from the ones before.
const URL = process.env.COUNTERS_TEST_URL;
const TOKEN = process.env.COUNTERS_TEST_TOKEN;
const live = { skip: URL ? false : 'set COUNTERS_TEST_URL and COUNTERS_TEST_TOKEN (make test does)' };

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
  // An unknown generation type: the service's 404, as the Python client's check answers it.
  const unknown = await checkXP('NO_SUCH_TYPE', { ...options, token: TOKEN, logger: null });
  assert.equal(unknown.has_sufficient_xp, false);
  assert.equal(unknown.code, 'not_found');
});

test('against the live service: a refused token throws even from silentExpGain', live, async () => {
  const options = { baseUrl: URL };
  const refused = await silentExpGain('daily_chat', null, 'not-a-token', options).then(
    () => assert.fail('resolved'), (error) => error);
  assert.ok(refused instanceof Unauthorized, String(refused));
  assert.equal(refused.status, 401);
  assert.equal(refused.code, 'unauthorized');
  assert.ok(refused.idempotencyKey);
  const check = await checkXP('NEW_IMAGE', { ...options, token: 'not-a-token', logger: null });
  assert.equal(check.has_sufficient_xp, false);
  assert.equal(check.code, 'unauthorized');
});

test('against the live service: a limit carries its Retry-After and the key', live, async () => {
  const limit = await award('daily_chat', null, TOKEN, { baseUrl: URL }).then(
    () => assert.fail('resolved'), (error) => error);
  assert.ok(limit instanceof DailyLimitReached, String(limit));
  assert.equal(limit.status, 429);
  assert.ok(limit.retryAfter > 0 && limit.retryAfter <= 86400, String(limit.retryAfter));
  assert.ok(limit.idempotencyKey);
});

/** The real fetch, but the first answer is lost on the way back (read, then a network error). */
function losingFirstAnswer() {
  const seen = { sent: [], replayed: [] };
  seen.fetch = async (url, init) => {
    seen.sent.push(init.headers['Idempotency-Key']);
    const response = await fetch(url, init);
    if (seen.sent.length === 1) {
      await response.text();
      throw new TypeError('fetch failed: answer lost');
    }
    seen.replayed.push(response.headers.get('idempotent-replayed'));
    return response;
  };
  return seen;
}

test('against the live service: a write lost on the way back is retried with its key, applied once', live, async () => {
  const before = (await getProgress({ baseUrl: URL, token: TOKEN })).total_exp;
  const lossy = losingFirstAnswer();
  const options = { baseUrl: URL, fetch: lossy.fetch, retries: 0 };
  const scene = { type: 'scene', id: 'js-s1' };
  const lost = await award('create_scene', scene, TOKEN, options).then(
    () => assert.fail('resolved'), (error) => error);
  assert.ok(lost instanceof Unavailable, String(lost));
  assert.equal(lost.idempotencyKey, lossy.sent[0]);
  const again = await award('create_scene', scene, TOKEN, { ...options, idempotencyKey: lost.idempotencyKey });
  assert.deepEqual(lossy.replayed, ['true']);  // the first answer, replayed
  assert.equal(again.exp_added, 15);
  assert.equal(again.total_exp, before + 15);
  assert.equal((await getProgress({ baseUrl: URL, token: TOKEN })).total_exp, before + 15);  // once
  const reused = await award('create_persona', { type: 'persona', id: 'js-p1' }, TOKEN, {
    ...options, idempotencyKey: lost.idempotencyKey,
  }).then(() => assert.fail('resolved'), (error) => error);
  assert.ok(reused instanceof IdempotencyKeyReused, String(reused));
  assert.equal(reused.idempotencyKey, lost.idempotencyKey);
});
