import { test } from 'node:test';
import assert from 'node:assert/strict';
import { DEFAULT_LEVELS, levelProgress, progressText } from '../src/levels.js';

test("the seed's 130 EXP: level 2, 15% of the way to level 3", () => {
  const view = levelProgress(2, 130);
  assert.equal(view.name, 'Creator');
  assert.equal(view.percentage, 15);
  assert.equal(view.currentLevelExp, 30);
  assert.equal(view.expNeededForNext, 200);
  assert.equal(view.expToNextLevel, 170);
  assert.deepEqual(progressText(view), {
    title: 'Level 2', name: 'Creator', exp: '130 EXP · 170 EXP to Level 3',
  });
});

test('the max level is a full bar with no next level', () => {
  const view = levelProgress(6, 1600);
  assert.equal(view.isMaxLevel, true);
  assert.equal(view.percentage, 100);
  assert.equal(progressText(view).exp, '1600 EXP · Max level');
});

test('boundaries: a level start is 0%, one short of the next is under 100%', () => {
  assert.equal(levelProgress(1, 0).percentage, 0);
  assert.equal(levelProgress(2, 100).percentage, 0);
  assert.equal(levelProgress(1, 99).percentage, 99);
  assert.equal(levelProgress(5, 1499).percentage, 99.8);
});

test('bad or missing props are clamped, never thrown', () => {
  assert.equal(levelProgress(undefined, undefined).level, 1);
  assert.equal(levelProgress(99, 5000).level, 6);
  assert.equal(levelProgress(2, 50).percentage, 0); // exp below the level's floor
  assert.equal(levelProgress('3', '450').percentage, 50);
});

test("the service's own table replaces the seed's", () => {
  const levels = { ...DEFAULT_LEVELS, 2: { ...DEFAULT_LEVELS[2], name: 'Maker' } };
  assert.equal(levelProgress(2, 130, levels).name, 'Maker');
});
