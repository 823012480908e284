// counters-client: the service from a browser (no runtime dependencies).
export { configure, request, silentExpGain, checkXP, getProgress, getLevels } from './client.js';
export { DEFAULT_LEVELS, levelProgress, progressText } from './levels.js';
export { makeLevelProgress } from './react.js';
