// counters-client: the service from a browser (no runtime dependencies).
export {
  configure, call, award, failsLoudly, silentExpGain, checkXP, getProgress, getLevels,
} from './client.js';
export * from './errors.js';
export * as shapes from './shapes.js';
export { DEFAULT_LEVELS, levelProgress, progressText } from './levels.js';
export { makeLevelProgress } from './react.js';
