import { test } from 'node:test';
import assert from 'node:assert/strict';
import { makeLevelProgress } from '../src/react.js';

// A stand-in React whose createElement records the tree (React itself is a peer dependency).
const React = { createElement: (type, props, ...children) => ({ type, props, children }) };

function find(node, className) {
  if (!node || typeof node !== 'object') return null;
  if (node.props?.className === className) return node;
  for (const child of node.children ?? []) {
    const found = find(child, className);
    if (found) return found;
  }
  return null;
}

test('LevelProgress renders level, name, EXP and the bar from props level and exp', () => {
  const LevelProgress = makeLevelProgress(React);
  const tree = LevelProgress({ level: 2, exp: 130 });
  assert.deepEqual(find(tree, 'level-progress-title').children, ['Level 2']);
  assert.deepEqual(find(tree, 'level-progress-name').children, ['Creator']);
  assert.deepEqual(find(tree, 'level-progress-exp').children, ['130 EXP · 170 EXP to Level 3']);
  assert.equal(find(tree, 'level-progress-fill').props.style.width, '15%');
  assert.equal(find(tree, 'level-progress-bar').props['aria-valuenow'], 15);
});

test('LevelProgress at the max level', () => {
  const tree = makeLevelProgress(React)({ level: 6, exp: 2000 });
  assert.equal(find(tree, 'level-progress-fill').props.style.width, '100%');
  assert.deepEqual(find(tree, 'level-progress-exp').children, ['2000 EXP · Max level']);
});
