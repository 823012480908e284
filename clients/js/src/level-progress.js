// <level-progress level="2" exp="130"></level-progress>: the level number and name, the EXP and a
// bar toward the next level. A plain custom element: no build step, no dependencies. Set the
// `levels` property to the service's table (GET /api/levels); the seed's table is the default.

import { DEFAULT_LEVELS, levelProgress, progressText } from './levels.js';

const STYLE = `
  :host { display: block; font: 14px/1.4 system-ui, sans-serif; color: #1f2330; }
  .head { display: flex; gap: .5em; align-items: baseline; margin-bottom: .35em; }
  .title { font-weight: 700; }
  .name { color: #5b47d6; font-weight: 600; }
  .bar { height: 12px; background: #e6e8ef; border-radius: 6px; overflow: hidden; }
  .fill { height: 100%; background: linear-gradient(90deg, #7b61ff, #b06cff);
          border-radius: 6px; transition: width .3s ease; }
  .exp { margin-top: .35em; color: #5c6170; font-size: 12px; }
`;

const Base = globalThis.HTMLElement ?? class {};

export class LevelProgressElement extends Base {
  static get observedAttributes() {
    return ['level', 'exp'];
  }

  constructor() {
    super();
    this._levels = DEFAULT_LEVELS;
    this.attachShadow({ mode: 'open' });
    this.shadowRoot.innerHTML = `<style>${STYLE}</style>
      <div class="head"><span class="title" part="title"></span><span class="name" part="name"></span></div>
      <div class="bar" part="bar" role="progressbar" aria-valuemin="0" aria-valuemax="100">
        <div class="fill" part="fill"></div></div>
      <div class="exp" part="exp"></div>`;
  }

  get levels() { return this._levels; }
  set levels(value) { this._levels = value || DEFAULT_LEVELS; this.render(); }
  get level() { return Number(this.getAttribute('level') || 1); }
  set level(value) { this.setAttribute('level', String(value)); }
  get exp() { return Number(this.getAttribute('exp') || 0); }
  set exp(value) { this.setAttribute('exp', String(value)); }

  connectedCallback() { this.render(); }
  attributeChangedCallback() { this.render(); }

  render() {
    const view = levelProgress(this.level, this.exp, this._levels);
    const text = progressText(view);
    const root = this.shadowRoot;
    root.querySelector('.title').textContent = text.title;
    root.querySelector('.name').textContent = text.name;
    root.querySelector('.exp').textContent = text.exp;
    root.querySelector('.fill').style.width = `${view.percentage}%`;
    const bar = root.querySelector('.bar');
    bar.setAttribute('aria-valuenow', String(view.percentage));
    bar.setAttribute('aria-label', `${text.title} ${text.name}: ${view.percentage}%`);
  }
}

if (globalThis.customElements && !customElements.get('level-progress')) {
  customElements.define('level-progress', LevelProgressElement);
}
