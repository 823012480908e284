// Answers that are not the service's, from real sockets (support/servers.js): a 200 of the wrong
// shape, a proxy's HTML page, a body cut short, 503s, refused credentials. Each becomes the
// error the Python client raises for it, with the write's Idempotency-Key on it.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  BadResponse, CountersError, DailyLimitReached, Forbidden, InvalidId, InvalidRequest, Unauthorized,
  Unavailable, award, call, checkXP, errorFor, getProgress, shapes, silentExpGain,
} from '../src/index.js';
import { answer, awardBody, deadUrl, keepingLogger, rawServer } from './support/servers.js';

// nginx's own 502 page, padded as nginx pads it.
const HTML_502 = '<html>\n<head><title>502 Bad Gateway</title></head>\n<body>\n' +
  '<center><h1>502 Bad Gateway</h1></center>\n<hr><center>nginx</center>\n</body>\n</html>\n' +
  '<!-- a padding to disable MSIE and Chrome friendly error page -->\n'.repeat(6);

async function rejection(promise) {
  try {
    await promise;
  } catch (error) {
    return error;
  }
  throw new assert.AssertionError({ message: 'resolved; a rejection was expected' });
}

test('a 200 that is not the result is BadResponse: awards and checkXP still fail open', async () => {
  const server = await rawServer(() => answer(200, '{"awarded_to": 5}'));
  const options = { baseUrl: server.url, logger: keepingLogger() };
  try {
    const bad = await rejection(award('daily_chat', null, 't', options));
    assert.ok(bad instanceof BadResponse && bad instanceof CountersError);
    assert.equal(bad.status, 200);
    assert.equal(bad.code, 'bad_response');
    assert.match(bad.detail, /`\$\.awarded_to`: expected string, got integer/);
    assert.match(bad.detail, /it begins "\{"awarded_to": 5\}"/);
    assert.equal(bad.idempotencyKey, server.requests[0]['idempotency-key']);
    assert.ok(bad.idempotencyKey);
    assert.equal(await silentExpGain('daily_chat', null, 't', options), null);
    assert.equal(options.logger.lines.at(-1).level, 'warn');
    assert.match(options.logger.lines.at(-1).message, /no EXP for daily_chat: 200 bad_response/);
    const check = await checkXP('NEW_IMAGE', options);
    assert.equal(check.has_sufficient_xp, false);
    assert.equal(check.code, 'bad_response');
    assert.equal(await getProgress(options), null);
    const read = await rejection(call('GET', '/api/exp/progress', {
      ...options, shape: shapes.USER_PROGRESS,
    }));
    assert.equal(read.idempotencyKey, null);  // a read sends no key
    assert.equal(server.requests.at(-1)['idempotency-key'], undefined);
  } finally {
    await server.close();
  }
});

test('a 200 that is not JSON (HTML, a cut JSON, any content type) is BadResponse', async () => {
  const html = '<!doctype html><title>Sign in</title>';
  const cut = awardBody().slice(0, 40);
  const answers = [
    answer(200, html, { 'Content-Type': 'text/html' }),
    // No Content-Length: the hang-up ends it, so HTTP has it whole while its JSON is cut.
    `HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n\r\n${cut}`,
    answer(200, ''),
  ];
  const server = await rawServer((n) => answers[n]);
  try {
    for (const body of [html, cut, '']) {
      const bad = await rejection(award('daily_chat', null, 't', { baseUrl: server.url }));
      assert.ok(bad instanceof BadResponse, String(bad));
      assert.match(bad.detail, /200 body does not decode: not JSON/);
      assert.ok(bad.detail.includes(`it begins "${body}"`), bad.detail);
    }
    assert.equal(server.requests.length, 3);  // not retried: the answer came whole
  } finally {
    await server.close();
  }
});

test('a body cut short of its Content-Length is no answer: retried, then Unavailable', async () => {
  const cut = `HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 4000\r\n\r\n${awardBody()}`;
  const server = await rawServer(() => cut);
  try {
    const lost = await rejection(award('daily_chat', null, 't', { baseUrl: server.url, retries: 2 }));
    assert.ok(lost instanceof Unavailable, String(lost));
    assert.equal(lost.status, 0);
    assert.equal(lost.code, 'unavailable');
    assert.equal(server.requests.length, 3);
    const keys = new Set(server.requests.map((headers) => headers['idempotency-key']));
    assert.deepEqual([...keys], [lost.idempotencyKey]);  // one key on every attempt, and on the error
  } finally {
    await server.close();
  }
});

test("a proxy's HTML 502 is retried, then Unavailable with its status and an excerpt", async () => {
  const server = await rawServer(() => answer(502, HTML_502, { 'Content-Type': 'text/html' }));
  const options = { baseUrl: server.url, retries: 1, idempotencyKey: 'mine-1', logger: keepingLogger() };
  try {
    const error = await rejection(award('daily_chat', null, 't', options));
    // A gateway's 502 on a write: it may have been applied, so retry with the same key.
    assert.ok(error instanceof Unavailable, String(error));
    assert.equal(error.status, 502);
    assert.equal(error.code, 'http_502');
    assert.ok(error.detail.startsWith('<html> <head><title>502 Bad Gateway</title>'), error.detail);
    assert.ok(error.detail.length <= 201 && error.detail.endsWith('…'), error.detail);
    assert.equal(error.body.detail, HTML_502);  // the whole page stays on the error
    assert.equal(error.idempotencyKey, 'mine-1');  // the caller's own key, as sent
    assert.deepEqual(server.requests.map((headers) => headers['idempotency-key']), ['mine-1', 'mine-1']);
    assert.equal(await silentExpGain('daily_chat', null, 't', options), null);
    assert.equal(options.logger.lines.at(-1).level, 'warn');  // an outage, as to the Python client
  } finally {
    await server.close();
  }
});

test('503 outcome_unknown and storage_unavailable: retried with one key, then Unavailable with Retry-After', async () => {
  for (const code of ['outcome_unknown', 'storage_unavailable']) {
    const unavailable = answer(503, JSON.stringify({ detail: 'down', code }), { 'Retry-After': '1' });
    const server = await rawServer((n) => (n === 0 ? unavailable : answer(200, awardBody())));
    try {
      const first = await award('daily_chat', null, 't', { baseUrl: server.url });
      assert.equal(first.exp_added, 20);  // the retry got the award
      const keys = server.requests.map((headers) => headers['idempotency-key']);
      assert.ok(keys[0] && keys.length === 2 && keys[0] === keys[1], String(keys));
    } finally {
      await server.close();
    }
    const down = await rawServer(() => unavailable);
    try {
      const error = await rejection(award('daily_chat', null, 't', { baseUrl: down.url, retries: 2 }));
      assert.ok(error instanceof Unavailable, String(error));
      assert.equal(error.status, 503);
      assert.equal(error.code, code);
      assert.equal(error.retryAfter, 1);
      assert.equal(down.requests.length, 3);
      assert.equal(error.idempotencyKey, down.requests[2]['idempotency-key']);
      assert.equal(await silentExpGain('daily_chat', null, 't', { baseUrl: down.url, retries: 0 }), null);
    } finally {
      await down.close();
    }
  }
});

test('refused credentials throw even from silentExpGain; expFailOpen false throws refusals too', async () => {
  const refusals = [
    answer(401, JSON.stringify({ detail: 'Invalid token', code: 'unauthorized' })),
    answer(403, JSON.stringify({ detail: 'Not allowed', code: 'forbidden' })),
    answer(429, JSON.stringify({ detail: 'Daily limit reached', code: 'daily_limit_reached' }),
      { 'Retry-After': '3600' }),
  ];
  const server = await rawServer((n) => refusals[n % refusals.length]);
  const options = { baseUrl: server.url, logger: keepingLogger() };
  try {
    const unauthorized = await rejection(silentExpGain('daily_chat', null, 'bad', options));
    assert.ok(unauthorized instanceof Unauthorized, String(unauthorized));
    assert.ok(unauthorized.idempotencyKey);
    assert.ok(await rejection(silentExpGain('daily_chat', null, 't', options)) instanceof Forbidden);
    assert.equal(await silentExpGain('daily_chat', null, 't', options), null);  // a limit: fails open
    const strict = { ...options, expFailOpen: false };
    await rejection(silentExpGain('daily_chat', null, 't', strict));  // the 401 again
    await rejection(silentExpGain('daily_chat', null, 't', strict));  // the 403
    const limit = await rejection(silentExpGain('daily_chat', null, 't', strict));
    assert.ok(limit instanceof DailyLimitReached, String(limit));
    assert.equal(limit.retryAfter, 3600);
    assert.equal(server.requests.length, 6);  // none retried
  } finally {
    await server.close();
  }
});

test("an award refused for the caller's mistake warns; a rule's refusal is debug", async () => {
  const answers = [
    [422, 'invalid_request', 'warn'], [400, 'malformed_body', 'warn'], [404, 'not_found', 'warn'],
    [418, 'teapot', 'warn'], [429, 'daily_limit_reached', 'debug'],
    [409, 'already_triggered', 'debug'], [409, 'total_limit', 'debug'],
  ];
  const server = await rawServer((n) => answer(answers[n][0], JSON.stringify({ detail: 'no', code: answers[n][1] })));
  const options = { baseUrl: server.url, logger: keepingLogger() };
  try {
    for (const [status, code] of answers) {
      assert.equal(await silentExpGain('daily_chat', null, 't', options), null, `${status} ${code}`);
    }
    assert.deepEqual(options.logger.lines.map((line) => line.level), answers.map((row) => row[2]));
  } finally {
    await server.close();
  }
});

test('an unreachable service: silentExpGain null, checkXP not sufficient, getProgress null', async () => {
  const options = { baseUrl: await deadUrl(), retries: 1, logger: keepingLogger() };
  assert.equal(await silentExpGain('daily_chat', null, 't', options), null);
  assert.match(options.logger.lines[0].message,
    /no EXP for daily_chat: 0 unavailable: POST \/api\/exp\/gain: TypeError: fetch failed \(ECONNREFUSED\)/);
  const check = await checkXP('NEW_IMAGE', options);
  assert.equal(check.has_sufficient_xp, false);
  assert.equal(check.subscription_url, '/subscriptions');
  assert.equal(check.code, 'unavailable');
  assert.equal(await getProgress(options), null);
  const lost = await rejection(award('daily_chat', null, 't', options));
  assert.ok(lost instanceof Unavailable && lost.idempotencyKey, String(lost));
});

test('an invalid target id throws InvalidId before sending, even from silentExpGain (as in Python)', async () => {
  const server = await rawServer(() => undefined);  // counts what arrives, answers nothing
  try {
    const options = { baseUrl: server.url, logger: keepingLogger(), deadlineMs: 300 };
    const integers = [-5, -1, 2 ** 63, Number.MAX_SAFE_INTEGER + 1, true, false, NaN, Infinity, 10n];
    for (const id of ['', 'a\nb', 'x'.repeat(300), 'alice\n', ' alice', 'a\x1b[31m', null, 1.5, ...integers]) {
      const refused = await rejection(silentExpGain('character_liked', { type: 'character', id }, 't', options));
      assert.ok(refused instanceof InvalidId && refused instanceof InvalidRequest, String(refused));
      assert.equal(refused.status, 0);
      assert.equal(refused.code, 'invalid_request');
      assert.match(refused.detail, /is not a target_id the service accepts/);
      assert.ok(refused.detail.split('').every((c) => c >= ' '), refused.detail);
    }
    assert.equal(server.requests.length, 0);
    assert.equal(options.logger.lines.length, 0);
  } finally {
    await server.close();
  }
});

test("a target that is not { type, id } (Python's pair) is a TypeError naming the shape", async () => {
  const server = await rawServer(() => undefined);  // counts what arrives, answers nothing
  try {
    for (const target of [['character', 123], 'character', 5, true]) {
      const refused = await rejection(silentExpGain('character_liked', target, 't', { baseUrl: server.url }));
      assert.ok(refused instanceof TypeError, String(refused));
      assert.match(refused.message, /target must be \{ type, id \} such as/);
    }
    assert.equal(server.requests.length, 0);
  } finally {
    await server.close();
  }
});

test('an integer target id from 0 to Number.MAX_SAFE_INTEGER is sent', async () => {
  const server = await rawServer(() => answer(200, awardBody()));
  try {
    for (const id of [0, 123, Number.MAX_SAFE_INTEGER, '9223372036854775807']) {
      const gained = await award('character_liked', { type: 'character', id }, 't', { baseUrl: server.url });
      assert.equal(gained.exp_added, 20);
    }
    assert.equal(server.requests.length, 4);
  } finally {
    await server.close();
  }
});

test('what silentExpGain and checkXP log has nothing unprintable in it', async () => {
  const options = { baseUrl: await deadUrl(), retries: 0, logger: keepingLogger() };
  assert.equal(await silentExpGain('daily\nchat\x1b[31m\u2028', null, 't', options), null);
  await checkXP('NEW\r\nIMAGE', options);
  const [award, check] = options.logger.lines.map((line) => line.message);
  assert.ok(award.startsWith('no EXP for daily\\nchat\\x1b[31m\\u2028: 0 unavailable'), award);
  assert.ok(check.startsWith('check-xp NEW\\r\\nIMAGE: 0 unavailable'), check);
});

test('a stalled service costs a call its deadline, not one timeout per attempt', async () => {
  const server = await rawServer(() => undefined);  // takes every request, answers none
  try {
    const started = Date.now();
    const late = await rejection(award('daily_chat', null, 't', {
      baseUrl: server.url, timeoutMs: 400, deadlineMs: 1000, retries: 5,
    }));
    assert.ok(late instanceof Unavailable, String(late));
    assert.match(late.detail, /TimeoutError: no whole answer within \d+ ms/);
    assert.ok(server.requests.length >= 2 && server.requests.length <= 3, `${server.requests.length}`);
    assert.ok(Date.now() - started < 3000);  // not 6 x 400 ms
  } finally {
    await server.close();
  }
});

test("a body's code picks the error, never one of Object's own members", () => {
  assert.ok(errorFor(400, { code: 'constructor', detail: 'x' }) instanceof InvalidRequest);
  assert.equal(errorFor(418, { code: 'toString' }).constructor, CountersError);
  assert.equal(errorFor(503, 'down', '1.5').retryAfter, null);  // whole seconds only
  assert.equal(errorFor(429, { code: 'daily_cap_reached' }, '60').retryAfter, 60);
});
