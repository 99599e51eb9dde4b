/**
 * A tiny element builder. Text always goes in as text nodes, never as HTML,
 * so nothing the server sends can inject markup.
 *
 *   h('td', { 'data-testid': 'price' }, '2.90 TUSD')
 */
export type Child = Node | string | number | null | undefined | false;

export function h<K extends keyof HTMLElementTagNameMap>(
  tag: K,
  attrs: Record<string, string> = {},
  ...children: Child[]
): HTMLElementTagNameMap[K] {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    el.setAttribute(name, value);
  }
  append(el, children);
  return el;
}

export function append(parent: Node, children: Child[]): void {
  for (const child of children) {
    if (child === null || child === undefined || child === false) {
      continue;
    }
    parent.appendChild(typeof child === 'object' ? child : document.createTextNode(String(child)));
  }
}

/** A table with one header row; `rows` are lists of cells. */
export function table(testid: string, headers: string[], rows: HTMLTableRowElement[]): HTMLTableElement {
  return h(
    'table',
    { class: 'jp-gpumarket-table', 'data-testid': testid },
    h('thead', {}, h('tr', {}, ...headers.map(text => h('th', {}, text)))),
    h('tbody', {}, ...rows)
  );
}

/** "0x1234…abcd" */
export function shortAddress(address: string): string {
  return address.length > 12 ? `${address.slice(0, 6)}…${address.slice(-4)}` : address;
}

/** "1 h 02 m", "3 m 05 s", "42 s" */
export function duration(seconds: number): string {
  const s = Math.max(0, Math.floor(seconds));
  const pad = (n: number) => String(n).padStart(2, '0');
  if (s >= 3600) {
    return `${Math.floor(s / 3600)} h ${pad(Math.floor((s % 3600) / 60))} m`;
  }
  if (s >= 60) {
    return `${Math.floor(s / 60)} m ${pad(s % 60)} s`;
  }
  return `${s} s`;
}
