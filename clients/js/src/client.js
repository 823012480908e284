// The counters service from a browser: EXP awards that never break the page, XP checks, progress.
// No dependencies: fetch, AbortController and crypto.randomUUID (browsers, node >= 20).

const RETRY_STATUSES = new Set([502, 503, 504]);
const FALLBACK_CHECK = Object.freeze({
  has_sufficient_xp: false,
  xp_balance: 0,
  xp_required: 0,
  xp_deficit: 0,
  message: 'Unable to check your XP credits right now.',
  guidance: "⚠️ We couldn't check your XP credits just now. Please try again in a moment, " +
    'or visit your subscription page to see your plan.',
  subscription_url: '/subscriptions',
  current_tier: null,
  recommended_tier: null,
  code: 'unavailable',
});

// timeoutMs bounds one attempt; deadlineMs the whole call, every attempt and backoff included.
const defaults = {
  baseUrl: '', token: null, fetch: null, timeoutMs: 3000, deadlineMs: 5000, retries: 2,
};
// Another attempt is not started with less than this left before the deadline.
const MIN_ATTEMPT_MS = 50;

/** Set what the module-level functions use: baseUrl ('' = same origin), token, fetch, ... */
export function configure(options = {}) {
  Object.assign(defaults, options);
}

function newKey() {
  return globalThis.crypto?.randomUUID?.() ?? `js-${Date.now()}-${Math.random().toString(16).slice(2)}`;
}

/**
 * One request with a timeout per attempt, retries (no answer, 502/503/504) and a deadline for the
 * whole call (a stalled service costs the page deadlineMs, not one timeout per attempt). A write
 * carries one Idempotency-Key on every attempt, so the service applies it once. Resolves to
 * { status, body, headers }; rejects only when no answer came at all.
 */
export async function request(method, path, { body, token, write = false, ...options } = {}) {
  const opts = { ...defaults, ...options };
  const fetchImpl = opts.fetch ?? globalThis.fetch;
  const headers = { Accept: 'application/json' };
  const secret = token ?? opts.token;
  if (secret) headers.Authorization = `Bearer ${secret}`;
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  if (write) headers['Idempotency-Key'] = opts.idempotencyKey ?? newKey();
  let lastError;
  const end = Date.now() + opts.deadlineMs;
  for (let attempt = 0; attempt <= opts.retries; attempt += 1) {
    const abort = new AbortController();
    const waitMs = Math.max(Math.min(opts.timeoutMs, end - Date.now()), MIN_ATTEMPT_MS);
    const timer = setTimeout(() => abort.abort(), waitMs);
    const last = attempt === opts.retries;
    try {
      const response = await fetchImpl(`${opts.baseUrl}${path}`, {
        method,
        headers,
        body: body === undefined ? undefined : JSON.stringify(body),
        signal: abort.signal,
      });
      const pauseMs = 50 * 2 ** attempt;
      const outOfTime = Date.now() + pauseMs + MIN_ATTEMPT_MS > end;
      if (!RETRY_STATUSES.has(response.status) || last || outOfTime) {
        const text = await response.text();
        let parsed = null;
        try { parsed = text ? JSON.parse(text) : null; } catch { parsed = { detail: text }; }
        return { status: response.status, body: parsed, headers: response.headers };
      }
    } catch (error) {
      lastError = error;
    } finally {
      clearTimeout(timer);
    }
    const pauseMs = 50 * 2 ** attempt;
    if (last || Date.now() + pauseMs + MIN_ATTEMPT_MS > end) break;
    await new Promise((resolve) => setTimeout(resolve, pauseMs));
  }
  throw lastError ?? new Error(`${method} ${path}: no answer`);
}

/**
 * The seed's silentExpGain(action, target, sessionToken): award EXP for `action` (target is
 * null or { type, id } for creator-targeted actions). Never throws: resolves to the award (the
 * service's body) or null when nothing was awarded (a limit, the cap, an outage).
 */
export async function silentExpGain(action, target, sessionToken, options = {}) {
  try {
    const body = { action };
    if (target) Object.assign(body, { target_type: target.type, target_id: target.id });
    const answer = await request('POST', '/api/exp/gain', {
      ...options, body, token: sessionToken, write: true,
    });
    return answer.status === 200 ? answer.body : null;
  } catch {
    return null;
  }
}

/**
 * The seed's checkXP(generationType): the check-xp body with guidance. Never throws: when the
 * service cannot say, it answers not sufficient with generic guidance.
 */
export async function checkXP(generationType, options = {}) {
  try {
    const path = `/api/v1/subscriptions/check-xp/${encodeURIComponent(generationType)}` +
      '?include_guidance=true';
    const answer = await request('GET', path, options);
    if (answer.status === 200) return answer.body;
    return { ...FALLBACK_CHECK, ...(answer.body?.code ? { code: answer.body.code } : {}) };
  } catch {
    return { ...FALLBACK_CHECK };
  }
}

/** The caller's { user_id, total_exp, level, progress }, or null if it cannot be had. */
export async function getProgress(options = {}) {
  try {
    const answer = await request('GET', '/api/exp/progress', options);
    return answer.status === 200 ? answer.body : null;
  } catch {
    return null;
  }
}

/** The level table (GET /api/levels), or null. */
export async function getLevels(options = {}) {
  try {
    const answer = await request('GET', '/api/levels', options);
    return answer.status === 200 ? answer.body : null;
  } catch {
    return null;
  }
}
