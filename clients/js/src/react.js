// The seed's React component, written with createElement so it needs no build step:
//   import LevelProgress from 'counters-client/LevelProgress';
//   <LevelProgress level={user.level} exp={user.exp} />
// makeLevelProgress(React) builds it for a given React (a peer dependency).

import { DEFAULT_LEVELS, levelProgress, progressText } from './levels.js';

const styles = {
  head: { display: 'flex', gap: '.5em', alignItems: 'baseline', marginBottom: '.35em' },
  title: { fontWeight: 700 },
  name: { color: '#5b47d6', fontWeight: 600 },
  bar: { height: 12, background: '#e6e8ef', borderRadius: 6, overflow: 'hidden' },
  fill: { height: '100%', background: 'linear-gradient(90deg, #7b61ff, #b06cff)', borderRadius: 6 },
  exp: { marginTop: '.35em', color: '#5c6170', fontSize: 12 },
};

/** The LevelProgress component for `React`: props level, exp and (optional) levels. */
export function makeLevelProgress(React) {
  const h = React.createElement;
  function LevelProgress({ level, exp, levels = DEFAULT_LEVELS }) {
    const view = levelProgress(level, exp, levels);
    const text = progressText(view);
    return h('div', { className: 'level-progress' },
      h('div', { style: styles.head },
        h('span', { className: 'level-progress-title', style: styles.title }, text.title),
        h('span', { className: 'level-progress-name', style: styles.name }, text.name)),
      h('div', {
        className: 'level-progress-bar', style: styles.bar, role: 'progressbar',
        'aria-valuemin': 0, 'aria-valuemax': 100, 'aria-valuenow': view.percentage,
      }, h('div', { className: 'level-progress-fill', style: { ...styles.fill, width: `${view.percentage}%` } })),
      h('div', { className: 'level-progress-exp', style: styles.exp }, text.exp));
  }
  return LevelProgress;
}
