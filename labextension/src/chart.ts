/**
 * Cumulative spend over time as a small inline SVG (no chart library).
 *
 *   spendChart([[1700000000, '0'], [1700000600, '1500000']], fmt)
 */
import type { TokenFormat } from './money';

const SVG = 'http://www.w3.org/2000/svg';
const WIDTH = 260;
const HEIGHT = 90;
const PAD = 6;

function svg<K extends keyof SVGElementTagNameMap>(tag: K, attrs: Record<string, string>): SVGElementTagNameMap[K] {
  const el = document.createElementNS(SVG, tag);
  for (const [name, value] of Object.entries(attrs)) {
    el.setAttribute(name, value);
  }
  return el;
}

export function spendChart(settled: [number, string][], fmt: TokenFormat): Element {
  // From zero before the first settlement to the total now, so even one lease draws a step.
  const now = Math.floor(Date.now() / 1000);
  const series: [number, string][] = settled.length
    ? [[settled[0][0], '0'], ...settled, [Math.max(now, settled[settled.length - 1][0] + 1), settled[settled.length - 1][1]]]
    : [];
  const root = svg('svg', {
    class: 'jp-gpumarket-chart',
    'data-testid': 'gpumarket-spend-chart',
    viewBox: `0 0 ${WIDTH} ${HEIGHT}`,
    role: 'img'
  });
  const title = svg('title', {});
  const last = series.length ? series[series.length - 1][1] : '0';
  title.textContent = `Cumulative spend: ${fmt.format(last)}`;
  root.appendChild(title);
  root.appendChild(svg('line', { x1: `${PAD}`, y1: `${HEIGHT - PAD}`, x2: `${WIDTH - PAD}`, y2: `${HEIGHT - PAD}`, class: 'jp-gpumarket-axis' }));
  if (series.length < 2) {
    return root;
  }
  const t0 = series[0][0];
  const t1 = series[series.length - 1][0];
  const top = Math.max(...series.map(([, v]) => fmt.approx(v)), 1e-12);
  const x = (t: number) => PAD + ((t - t0) / Math.max(t1 - t0, 1)) * (WIDTH - 2 * PAD);
  const y = (v: string) => HEIGHT - PAD - (fmt.approx(v) / top) * (HEIGHT - 2 * PAD);
  // A step line: spend jumps when a lease settles and stays flat in between.
  const points: string[] = [];
  series.forEach(([t, v], i) => {
    if (i > 0) {
      points.push(`${x(t).toFixed(1)},${y(series[i - 1][1]).toFixed(1)}`);
    }
    points.push(`${x(t).toFixed(1)},${y(v).toFixed(1)}`);
  });
  root.appendChild(svg('polyline', { points: points.join(' '), class: 'jp-gpumarket-line', fill: 'none' }));
  return root;
}
