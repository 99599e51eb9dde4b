/**
 * Status bar item: "GPU spend: 2.90 TUSD/h" across all live leases, or
 * "GPU spend: none" when nothing runs, "GPU spend: —" (the reason as its tooltip)
 * when the market cannot be read. Clicking it opens the sidebar.
 */
import { Widget } from '@lumino/widgets';

import type { MarketModel } from './model';
import { TokenFormat } from './money';

export class SpendStatus extends Widget {
  constructor(
    private readonly model: MarketModel,
    onClick: () => void
  ) {
    super();
    this.addClass('jp-gpumarket-status');
    this.node.setAttribute('data-testid', 'gpumarket-status');
    this.node.addEventListener('click', onClick);
    model.changed.connect(this.render, this);
    this.render();
  }

  dispose(): void {
    this.model.changed.disconnect(this.render, this);
    super.dispose();
  }

  private render(): void {
    const { leases, errors } = this.model.state;
    this.node.title = errors.leases ?? 'Spend rate of your live GPU leases; click to open the GPU market';
    if (errors.leases) {
      this.node.textContent = 'GPU spend: —';
    } else if (!leases) {
      this.node.textContent = 'GPU spend: …';
    } else if (leases.leases.length === 0) {
      this.node.textContent = 'GPU spend: none';
    } else {
      const fmt = new TokenFormat(leases.decimals, leases.symbol);
      this.node.textContent = `GPU spend: ${fmt.format(leases.spend_rate_per_hour)}/h`;
    }
  }
}
