// What the service answers on success, checked before a caller sees it (the Python client
// decodes into counters_client/types.py; these are the same fields). A 2xx body that does not
// match is BadResponse, never a TypeError later in the page. Fields the service adds later are
// ignored, so an older client keeps working against a newer service.
//
// A shape is 'string', 'integer', 'number', 'boolean', an object of field -> shape,
// nullable(shape) or dictOf(shape).

/** `shape` or null. */
export function nullable(shape) {
  return { nullable: shape };
}

/** An object of any keys whose every value is `shape`. */
export function dictOf(shape) {
  return { dictOf: shape };
}

const PROGRESS = {
  current_level: 'integer',
  level_name: 'string',
  total_exp: 'integer',
  current_level_exp: 'integer',
  exp_needed_for_next: 'integer',
  exp_to_next_level: 'integer',
  progress_percentage: 'number',
  is_max_level: 'boolean',
};
const TIER_INFO = { tier_name: 'string', tier_display_name: 'string', tier_level: 'integer' };

/** POST /api/exp/gain: the seed's success body. */
export const AWARD = {
  awarded_to: 'string',
  action: 'string',
  success: 'boolean',
  exp_added: 'integer',
  total_exp: 'integer',
  level: 'integer',
  leveled_up: 'boolean',
  daily_exp_gained: 'integer',
  daily_exp_cap: 'integer',
  action_count: 'integer',
  action_limit: nullable('integer'),
  progress: PROGRESS,
};

/** GET /api/exp/progress. */
export const USER_PROGRESS = {
  user_id: 'string', total_exp: 'integer', level: 'integer', progress: PROGRESS,
};

/** GET /api/v1/subscriptions/check-xp/{type} (`guidance` only when asked for). */
export const XP_CHECK = {
  has_sufficient_xp: 'boolean',
  xp_balance: 'integer',
  xp_required: 'integer',
  xp_deficit: 'integer',
  message: 'string',
  subscription_url: 'string',
  current_tier: nullable(TIER_INFO),
  recommended_tier: nullable({
    ...TIER_INFO, monthly_xp_allocation: 'integer', monthly_price_aud: 'number',
  }),
};

/** GET /api/levels: level number -> its row. */
export const LEVELS = dictOf({ name: 'string', unlock: 'string', exp_required: 'integer' });

function kind(value) {
  if (value === null) return 'null';
  if (Array.isArray(value)) return 'array';
  if (Number.isInteger(value)) return 'integer';
  return typeof value;
}

const SCALARS = {
  string: (value) => typeof value === 'string',
  integer: (value) => Number.isInteger(value),
  number: (value) => typeof value === 'number' && Number.isFinite(value),
  boolean: (value) => typeof value === 'boolean',
};

/**
 * Why `value` is not `shape` ("`$.progress.level`: expected integer, got string"), or null when
 * it is. `path` names `value` in the message.
 */
export function mismatch(value, shape, path = '$') {
  if (typeof shape === 'string') {
    return SCALARS[shape](value) ? null : `\`${path}\`: expected ${shape}, got ${kind(value)}`;
  }
  if (shape.nullable) return value === null ? null : mismatch(value, shape.nullable, path);
  if (kind(value) !== 'object') return `\`${path}\`: expected object, got ${kind(value)}`;
  if (shape.dictOf) {
    for (const [key, item] of Object.entries(value)) {
      const wrong = mismatch(item, shape.dictOf, `${path}.${key}`);
      if (wrong) return wrong;
    }
    return null;
  }
  for (const [field, inner] of Object.entries(shape)) {
    if (!Object.hasOwn(value, field)) return `\`${path}\`: missing required field \`${field}\``;
    const wrong = mismatch(value[field], inner, `${path}.${field}`);
    if (wrong) return wrong;
  }
  return null;
}
