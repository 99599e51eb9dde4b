/**
 * The active leases: one keyed card per lease (a narrow sidebar fits no wide
 * table), so a poll or a tick updates text in place and never replaces a
 * Release button under the mouse.
 * Spend ticks every second from the price and the time since the last poll;
 * the next poll brings the chain's figure back.
 */
import { accrued, TokenFormat } from './money';
import { duration, h } from './dom';
import type { MarketModel } from './model';
import type { ILease } from './types';

interface IRow {
  lease: ILease;
  card: HTMLElement;
  elapsed: HTMLElement;
  spent: HTMLElement;
  button: HTMLButtonElement;
}

export class LeaseList {
  readonly node: HTMLElement;
  private readonly body: HTMLElement;
  private readonly rows = new Map<number, IRow>();

  constructor(private readonly model: MarketModel) {
    this.body = h('div', {});
    this.node = h('div', { class: 'jp-gpumarket-leases', 'data-testid': 'gpumarket-leases' }, this.body);
  }

  /** Match cards to the polled leases: add new ones, drop closed ones, refresh the rest. */
  update(): void {
    const leases = this.model.state.leases?.leases ?? [];
    const live = new Set(leases.map(l => l.lease));
    for (const [id, row] of this.rows) {
      if (!live.has(id)) {
        row.card.remove();
        this.rows.delete(id);
      }
    }
    for (const lease of leases) {
      const row = this.rows.get(lease.lease) ?? this.addRow(lease);
      row.lease = lease;
    }
    this.tick();
  }

  /** Elapsed time and spend as of now, from the last polled figures. */
  tick(): void {
    const state = this.model.state;
    if (!state.leases) {
      return;
    }
    const fmt = new TokenFormat(state.leases.decimals, state.leases.symbol);
    const since = Math.max(0, Date.now() / 1000 - state.leasesAt);
    for (const row of this.rows.values()) {
      const { lease } = row;
      const elapsed = lease.elapsed_s + since;
      const polled = BigInt(lease.spent);
      const ticking = accrued(BigInt(lease.price_per_gpu_hour), lease.gpus, elapsed);
      const deposit = BigInt(lease.deposit);
      let spent = ticking > polled ? ticking : polled;
      spent = spent > deposit ? deposit : spent; // a lease never spends past its deposit
      row.elapsed.textContent = duration(elapsed);
      row.spent.textContent = fmt.format(spent);
    }
  }

  private addRow(lease: ILease): IRow {
    const fmt = new TokenFormat(this.model.state.leases!.decimals, this.model.state.leases!.symbol);
    const id = String(lease.lease);
    const button = h('button', { class: 'jp-mod-styled jp-mod-warn jp-gpumarket-release', 'data-testid': `gpumarket-release-${id}`, title: 'Close this lease now: the provider is paid what accrued, the rest is refunded' }, 'Release');
    button.addEventListener('click', () => void this.release(lease.lease, button));
    const row: IRow = {
      lease,
      elapsed: h('span', { 'data-testid': 'elapsed' }),
      spent: h('span', { 'data-testid': 'spent' }),
      button,
      card: h('div', { class: 'jp-gpumarket-card', 'data-testid': `gpumarket-lease-${id}`, 'data-lease': id })
    };
    row.card.append(
      h(
        'div',
        { class: 'jp-gpumarket-card-head' },
        h('span', { 'data-testid': 'lease', class: 'jp-gpumarket-strong' }, `#${id}`),
        ' · ',
        h('span', { 'data-testid': 'provider' }, `provider ${lease.provider}`),
        button
      ),
      h('div', { 'data-testid': 'gpu' }, `${lease.gpu} ×${lease.gpus}`),
      h(
        'div',
        { class: 'jp-gpumarket-dim' },
        h('span', { 'data-testid': 'price' }, fmt.format(lease.price_per_gpu_hour)),
        '/GPU-h · ',
        row.elapsed,
        ' · spent ',
        row.spent
      )
    );
    this.body.appendChild(row.card);
    this.rows.set(lease.lease, row);
    return row;
  }

  private async release(leaseId: number, button: HTMLButtonElement): Promise<void> {
    button.disabled = true;
    button.textContent = 'Releasing…';
    const receipt = await this.model.release(leaseId);
    if (receipt) {
      const token = this.model.state.leases ?? this.model.state.history;
      const fmt = new TokenFormat(token?.decimals ?? 0, token?.symbol ?? '');
      this.model.setNotice(
        `Lease #${receipt.lease_id} released: paid ${fmt.format(receipt.paid_to_provider)} to the provider, ` +
          `refunded ${fmt.format(receipt.refunded)}.`
      );
    } else {
      button.disabled = false;
      button.textContent = 'Release';
    }
  }
}
