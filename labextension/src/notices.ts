/**
 * The watchdog's notices in the lab: idle warnings at the top of the sidebar
 * with a countdown to the release, the latest releases under History, and
 * JupyterLab notifications (a warning once per idle warning, dismissed when it
 * no longer holds; an info for each release made while the page is open), so a
 * warning reaches the user even while the sidebar is closed.
 *
 *   const banner = new IdleWarnings();          // panel.node.append(banner.node)
 *   banner.update(model.state.notices);         // on model.changed; banner.tick() every second
 *   new NoticeAlerts(model, () => shell.activateById(PANEL_ID));
 */
import { Notification } from '@jupyterlab/apputils';

import { duration, h } from './dom';
import type { IWatchdogNotices, MarketModel } from './model';
import type { INotice } from './types';

/** Seconds until an idle warning's leases are released, by the server's clock (`skew`: server minus browser). */
export function secondsLeft(warning: INotice, skew: number): number {
  return Math.max(0, (warning.release_at ?? 0) - (Date.now() / 1000 + skew));
}

/** "released in 1 m 40 s unless a task runs", or "being released" once the time is up. */
export function releaseIn(warning: INotice, skew: number): string {
  const left = secondsLeft(warning, skew);
  return left > 0 ? `released in ${duration(left)} unless a task runs` : 'being released now';
}

/** The pending idle warnings, one block each, rebuilt only when the set of warnings changes. */
export class IdleWarnings {
  readonly node: HTMLElement;
  private key = '';
  private shown: Array<{ warning: INotice; countdown: HTMLElement }> = [];
  private skew = 0;

  constructor() {
    this.node = h('div', { class: 'jp-gpumarket-idle', 'data-testid': 'gpumarket-idle-warnings' });
    this.node.hidden = true;
  }

  update(notices: IWatchdogNotices | undefined): void {
    const warnings = notices?.warnings ?? [];
    this.skew = notices?.skew ?? 0;
    const key = JSON.stringify(warnings.map(w => [w.id, w.text]));
    if (key !== this.key) {
      this.key = key;
      this.shown = warnings.map(warning => ({
        warning,
        countdown: h('span', { 'data-testid': 'release-in', 'aria-live': 'off' })
      }));
      this.node.replaceChildren(
        ...this.shown.map(({ warning, countdown }) =>
          h(
            'div',
            {
              class: 'jp-gpumarket-idle-warning',
              'data-testid': `gpumarket-idle-warning-${warning.lease}`,
              'data-notice': String(warning.id),
              role: 'alert'
            },
            h('div', { class: 'jp-gpumarket-strong' }, `⚠ Idle GPU lease #${warning.lease}: `, countdown),
            h('div', { 'data-testid': 'text' }, warning.text)
          )
        )
      );
      this.node.hidden = warnings.length === 0;
    }
    this.tick();
  }

  /** The countdowns as of now. */
  tick(): void {
    for (const { warning, countdown } of this.shown) {
      countdown.textContent = releaseIn(warning, this.skew);
    }
  }
}

/** The watchdog's latest releases, newest first, for the History section. */
export function releasedView(released: INotice[]): HTMLElement | null {
  if (!released.length) {
    return null;
  }
  return h(
    'div',
    { class: 'jp-gpumarket-released', 'data-testid': 'gpumarket-released-notices' },
    h('div', { class: 'jp-gpumarket-label' }, 'Released by the watchdog'),
    ...[...released].reverse().map(n =>
      h(
        'div',
        { class: 'jp-gpumarket-item', 'data-testid': `gpumarket-released-${n.lease}`, 'data-notice': String(n.id) },
        h('span', { class: 'jp-gpumarket-dim' }, new Date(n.time * 1000).toLocaleTimeString()),
        ' ',
        n.text
      )
    )
  );
}

/** JupyterLab notifications for what the watchdog says, each notice told once. */
export class NoticeAlerts {
  private readonly toasts = new Map<number, string>(); // pending warning id -> notification id
  private readonly told = new Set<number>(); // releases already announced

  constructor(
    private readonly model: MarketModel,
    private readonly openSidebar: () => void
  ) {
    model.changed.connect(this.update, this);
  }

  dispose(): void {
    this.model.changed.disconnect(this.update, this);
  }

  private update(): void {
    const notices = this.model.state.notices;
    if (!notices) {
      return;
    }
    const pending = new Set(notices.warnings.map(w => w.id));
    for (const [id, toast] of this.toasts) {
      if (!pending.has(id)) {
        Notification.dismiss(toast); // a task ran, or the release came: the warning no longer holds
        this.toasts.delete(id);
      }
    }
    for (const warning of notices.warnings) {
      if (!this.toasts.has(warning.id)) {
        const message = `GPU lease #${warning.lease} is idle: ${releaseIn(warning, notices.skew)}.`;
        this.toasts.set(
          warning.id,
          Notification.warning(message, {
            autoClose: false,
            actions: [{ label: 'Open GPU market', caption: 'Show the warning in the GPU market sidebar', callback: this.openSidebar }]
          })
        );
      }
    }
    for (const release of notices.released) {
      if (notices.newReleases.includes(release.id) && !this.told.has(release.id)) {
        this.told.add(release.id);
        Notification.info(release.text, { autoClose: 15000 });
      }
    }
  }
}
