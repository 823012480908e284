// Where a total EXP stands between its level and the next: the service's `progress` block
// (counters/exp/levels.py), computed in the browser from the level table (GET /api/levels).

/** The seed's level table, used until the service's own table is given. */
export const DEFAULT_LEVELS = Object.freeze({
  1: { name: 'Newbie', unlock: 'Create chars, scenes, personas', exp_required: 0 },
  2: { name: 'Creator', unlock: 'Fork, private chars', exp_required: 100 },
  3: { name: 'Advanced', unlock: '1 paid char, basic analytics', exp_required: 300 },
  4: { name: 'Pro', unlock: '2 paid chars, prompt controls', exp_required: 600 },
  5: { name: 'Elite', unlock: 'Featured chance, beta tools', exp_required: 1000 },
  6: { name: 'Master', unlock: 'Creator badge, early revenue tools', exp_required: 1500 },
});

function table(levels) {
  return Object.keys(levels)
    .map(Number)
    .sort((a, b) => a - b)
    .map((n) => ({ level: n, ...levels[n] }));
}

/**
 * What a LevelProgress shows for `level` and total `exp`: the level's name, the EXP into it,
 * the EXP to the next level, and the bar's percentage (0-100, one decimal, as the service
 * rounds it). At the max level the bar is full and `isMaxLevel` is true.
 */
export function levelProgress(level, exp, levels = DEFAULT_LEVELS) {
  const rows = table(levels);
  const total = Math.max(0, Math.floor(Number(exp) || 0));
  const index = Math.min(Math.max(1, Math.floor(Number(level) || 1)), rows.length) - 1;
  const row = rows[index];
  const next = rows[index + 1];
  const floor = row.exp_required;
  if (!next) {
    return { level: row.level, name: row.name, exp: total, isMaxLevel: true, percentage: 100,
      currentLevelExp: total - floor, expNeededForNext: 0, expToNextLevel: 0, nextLevel: null };
  }
  const needed = next.exp_required - floor;
  const into = Math.min(Math.max(total - floor, 0), needed);
  return {
    level: row.level,
    name: row.name,
    exp: total,
    isMaxLevel: false,
    percentage: Math.round((into * 1000) / needed) / 10,
    currentLevelExp: into,
    expNeededForNext: needed,
    expToNextLevel: needed - into,
    nextLevel: next.level,
  };
}

/** The texts a LevelProgress renders, shared by the web component and the React one. */
export function progressText(view) {
  return {
    title: `Level ${view.level}`,
    name: view.name,
    exp: view.isMaxLevel
      ? `${view.exp} EXP · Max level`
      : `${view.exp} EXP · ${view.expToNextLevel} EXP to Level ${view.nextLevel}`,
  };
}
