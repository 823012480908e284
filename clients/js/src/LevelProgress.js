// The seed's default export: import LevelProgress from '.../LevelProgress' (React is a peer).
import React from 'react';
import { makeLevelProgress } from './react.js';

export default makeLevelProgress(React);
