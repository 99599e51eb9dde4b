/**
 * The GPU market sidebar: the watchdog's idle warnings on top, wallet and
 * budget, active leases with live spend and Release buttons, the instructor
 * view (when this account runs a class), recent offers, and history with costs,
 * a spend chart and the watchdog's latest releases.
 *
 * Sections other than the lease list are rebuilt only when their data
 * changes; the lease list updates in place and ticks every second.
 */
import { Widget } from '@lumino/widgets';

import { spendChart } from './chart';
import { classroomView } from './classroom';
import { duration, h, shortAddress, table } from './dom';
import { LeaseList } from './leases';
import { IdleWarnings, releasedView } from './notices';
import type { MarketModel, Part } from './model';
import { TokenFormat } from './money';

export const PANEL_ID = 'gpumarket-panel';

interface ISection {
  body: HTMLElement;
  key: string;
}

export class MarketPanel extends Widget {
  private readonly leases: LeaseList;
  private readonly sections = new Map<string, ISection>();
  private readonly notice: HTMLElement;
  private readonly warnings = new IdleWarnings();
  private readonly released: ISection = { body: h('div', {}), key: '' };
  private readonly rate: HTMLElement;
  private ticker: number | undefined;

  constructor(private readonly model: MarketModel) {
    super();
    this.id = PANEL_ID;
    this.addClass('jp-gpumarket-panel');
    this.node.setAttribute('data-testid', 'gpumarket-panel');
    this.leases = new LeaseList(model);
    this.notice = h('div', { class: 'jp-gpumarket-notice', 'data-testid': 'gpumarket-notice', role: 'status' });
    this.rate = h('span', { class: 'jp-gpumarket-rate', 'data-testid': 'gpumarket-rate' });
    this.node.append(
      h('h2', { class: 'jp-gpumarket-title' }, 'GPU market'),
      this.warnings.node,
      this.notice,
      this.section('wallet', 'Wallet'),
      this.section('leases', 'Active leases', this.rate),
      this.section('classroom', 'Classes you run'),
      this.section('offers', 'Offers'),
      this.section('history', 'History')
    );
    this.sections.get('leases')!.body.appendChild(this.leases.node);
    this.sections.get('history')!.body.after(this.released.body);
    model.changed.connect(this.render, this);
  }

  protected onAfterShow(): void {
    this.model.setDetailed(true);
    this.render();
    window.clearInterval(this.ticker);
    this.ticker = window.setInterval(() => {
      this.leases.tick();
      this.warnings.tick();
    }, 1000);
  }

  protected onAfterHide(): void {
    this.model.setDetailed(false);
    window.clearInterval(this.ticker);
  }

  dispose(): void {
    window.clearInterval(this.ticker);
    this.model.changed.disconnect(this.render, this);
    super.dispose();
  }

  private section(name: string, heading: string, extra?: HTMLElement): HTMLElement {
    const body = h('div', { class: 'jp-gpumarket-section-body' });
    this.sections.set(name, { body, key: '' });
    return h(
      'section',
      { class: 'jp-gpumarket-section', 'data-testid': `gpumarket-section-${name}` },
      h('h3', {}, heading, extra ? ' ' : '', extra ?? ''),
      body
    );
  }

  private render(): void {
    const { state } = this.model;
    this.notice.textContent = state.notice?.text ?? '';
    this.notice.classList.toggle('jp-mod-error', !!state.notice?.error);
    this.notice.hidden = !state.notice;
    // Without a chain every other part fails for the same reason, which the wallet already says.
    const offline = state.wallet?.connected === false;
    this.warnings.update(offline ? undefined : state.notices);
    for (const name of ['leases', 'classroom', 'offers', 'history']) {
      const teaching = name !== 'classroom' || !!state.classroom?.classes.length || !!state.errors.classroom;
      this.sections.get(name)!.body.closest('section')!.hidden = offline || !teaching;
    }
    this.fill('wallet', offline ? ['wallet'] : ['wallet', 'budget'], () => this.walletView());
    if (offline) {
      return;
    }
    this.fill('classroom', ['classroom'], () => this.classroomSection());
    this.fill('offers', ['offers'], () => this.offersView());
    this.fill('history', ['history'], () => this.historyView());
    const released = state.notices?.released ?? [];
    const releasedKey = JSON.stringify(released.map(n => n.id));
    if (releasedKey !== this.released.key) {
      this.released.key = releasedKey;
      this.released.body.replaceChildren(releasedView(released) ?? '');
    }
    const leases = state.leases;
    this.rate.textContent = leases ? `· ${this.token().format(leases.spend_rate_per_hour)}/h` : '';
    const error = state.errors.leases;
    const box = this.sections.get('leases')!.body;
    box.querySelector('[data-testid="gpumarket-error"]')?.remove();
    if (error) {
      box.prepend(errorLine(error));
    }
    box.querySelector('.jp-gpumarket-empty')?.remove();
    if (leases && leases.leases.length === 0) {
      box.appendChild(h('div', { class: 'jp-gpumarket-empty' }, 'No active leases.'));
    }
    this.leases.update();
  }

  /** Rebuild a section only when the data it shows (or its error) changed. */
  private fill(name: string, parts: Part[], view: () => HTMLElement | null): void {
    const section = this.sections.get(name)!;
    const { state } = this.model;
    const key = JSON.stringify(parts.map(p => [(state as any)[p], state.errors[p]]));
    if (key === section.key) {
      return;
    }
    section.key = key;
    section.body.replaceChildren(...parts.map(p => state.errors[p]).filter(Boolean).map(e => errorLine(e!)));
    const node = view();
    if (node) {
      section.body.appendChild(node);
    }
  }

  private token(): TokenFormat {
    const s = this.model.state;
    const info = s.leases ?? s.budget ?? s.offers ?? s.history ?? (s.wallet?.connected ? s.wallet : undefined);
    return new TokenFormat(info?.decimals ?? 0, info?.symbol ?? '');
  }

  private walletView(): HTMLElement | null {
    const { wallet, budget } = this.model.state;
    if (!wallet) {
      return null;
    }
    if (!wallet.connected) {
      return h('div', { class: 'jp-gpumarket-warn', 'data-testid': 'gpumarket-not-connected' }, wallet.reason);
    }
    const fmt = new TokenFormat(wallet.decimals, wallet.symbol);
    return h(
      'div',
      { 'data-testid': 'gpumarket-wallet' },
      kv('Account', h('span', { title: wallet.address, 'data-testid': 'gpumarket-address' }, shortAddress(wallet.address))),
      kv('Balance', h('span', { 'data-testid': 'gpumarket-balance' }, fmt.format(wallet.balance))),
      kv('Chain', `${wallet.chain_id} · market ${shortAddress(wallet.market)}`),
      budget
        ? kv(
            'Budget',
            h(
              'span',
              { 'data-testid': 'gpumarket-budget' },
              budget.cap === null
                ? `no cap · spent ${fmt.format(budget.spent)}`
                : `${fmt.format(budget.remaining)} left of ${fmt.format(budget.cap)} · committed ${fmt.format(budget.committed)}`
            )
          )
        : null
    );
  }

  private classroomSection(): HTMLElement | null {
    const { classroom } = this.model.state;
    return classroom && classroom.classes.length ? classroomView(classroom, this.token()) : null;
  }

  private offersView(): HTMLElement | null {
    const { offers } = this.model.state;
    if (!offers) {
      return null;
    }
    const fmt = new TokenFormat(offers.decimals, offers.symbol);
    const items = offers.offers.map(o =>
      h(
        'div',
        { class: `jp-gpumarket-item${o.active ? '' : ' jp-gpumarket-inactive'}`, 'data-provider': String(o.provider) },
        h('div', {}, h('span', { class: 'jp-gpumarket-strong' }, `provider ${o.provider}`), ` · ${o.gpu} ×${o.gpus}`),
        h(
          'div',
          { class: 'jp-gpumarket-dim' },
          `${o.memory_gib} GiB · ${o.tflops} TFLOPS · ${o.region || 'any region'} · last ${fmt.format(o.last_price ?? o.min_price)}` +
            ` · reliability ${Math.round(o.reliability * 100)}%${o.active ? '' : ' · inactive'}`
        )
      )
    );
    return items.length
      ? h('div', { 'data-testid': 'gpumarket-offers' }, ...items)
      : h('div', { class: 'jp-gpumarket-empty' }, 'No providers registered yet.');
  }

  private historyView(): HTMLElement | null {
    const { history } = this.model.state;
    if (!history) {
      return null;
    }
    const fmt = new TokenFormat(history.decimals, history.symbol);
    const total = history.history.reduce((sum, r) => sum + BigInt(r.paid_to_provider), 0n);
    const rows = history.history.map(r =>
      h(
        'tr',
        { 'data-testid': `gpumarket-history-${r.lease_id}` },
        h('td', { title: `provider ${r.provider}` }, `#${r.lease_id}`),
        h('td', {}, `×${r.gpus} · ${duration(r.seconds)}`),
        h('td', {}, fmt.format(r.paid_to_provider)),
        h('td', {}, fmt.format(r.refunded))
      )
    );
    return h(
      'div',
      {},
      kv('Total cost', h('span', { 'data-testid': 'gpumarket-total-cost' }, fmt.format(total))),
      history.spend_series.length ? spendChart(history.spend_series, fmt) : null,
      rows.length
        ? table('gpumarket-history', ['Lease', 'GPUs · time', 'Cost', 'Refunded'], rows)
        : h('div', { class: 'jp-gpumarket-empty' }, 'No closed leases yet.')
    );
  }
}

function kv(label: string, value: Node | string): HTMLElement {
  return h('div', { class: 'jp-gpumarket-kv' }, h('span', { class: 'jp-gpumarket-label' }, label), value);
}

function errorLine(text: string): HTMLElement {
  return h('div', { class: 'jp-gpumarket-error', 'data-testid': 'gpumarket-error', role: 'alert' }, text);
}
