/**
 * The market as the browser last saw it, refreshed by polling the server.
 *
 * Wallet, leases, the watchdog's notices and budget are polled every `fastMs`;
 * offers, history and the classroom every `slowEvery` polls (they change rarely
 * and cost chain calls). While the sidebar is closed only the leases (the
 * status bar needs the spend rate) and the notices (an idle warning must reach
 * the user) are polled, and nothing while the browser tab is hidden: a hosted
 * JupyterLab with a whole class open should not flood the chain.
 * Each part keeps its own error text, so one failing endpoint does not blank
 * the others. Notices are asked for incrementally (`since` the last one seen).
 *
 *   const model = new MarketModel(new MarketApi());
 *   model.changed.connect(() => render(model));
 *   model.start();
 */
import { Signal } from '@lumino/signaling';

import { MarketApi, MarketError } from './api';
import type { IBudget, IClassroom, IHistory, ILeases, INotice, INotices, IOffers, IReceipt, IWallet } from './types';

export type Part = 'wallet' | 'leases' | 'notices' | 'budget' | 'offers' | 'history' | 'classroom';

const FAST: Part[] = ['wallet', 'leases', 'notices', 'budget'];
const ALWAYS: Part[] = ['leases', 'notices'];
/** How many of the watchdog's releases the sidebar keeps listing. */
const RECENT_RELEASES = 10;
const SLOW: Part[] = ['offers', 'history', 'classroom'];

export interface IState {
  wallet?: IWallet;
  leases?: ILeases;
  budget?: IBudget;
  offers?: IOffers;
  history?: IHistory;
  classroom?: IClassroom;
  /** What the watchdog said, once the first notices poll answered. */
  notices?: IWatchdogNotices;
  /** Browser clock (unix seconds) when `leases` arrived: spend ticks from here. */
  leasesAt: number;
  errors: Partial<Record<Part, string>>;
  /** The outcome of the last user action (release), shown until the next one. */
  notice?: { text: string; error: boolean };
}

export interface IWatchdogNotices {
  /** Idle warnings still pending: their leases are released at `release_at` unless a task runs. */
  warnings: INotice[];
  /** The watchdog's latest releases (newest last), including those before the page opened. */
  released: INotice[];
  /** Ids of the releases that arrived after the first poll: news to tell the user about. */
  newReleases: number[];
  /** Server clock minus browser clock (seconds), to count down to `release_at`. */
  skew: number;
}

export class MarketModel {
  readonly changed = new Signal<this, void>(this);
  readonly state: IState = { leasesAt: 0, errors: {} };
  private timer: number | undefined;
  private polls = 0;
  private busy = false;
  private detailed = false;
  private pendingAll = false;
  private noticesSince = 0;

  constructor(
    readonly api: MarketApi,
    private readonly fastMs = 3000,
    private readonly slowEvery = 4
  ) {}

  start(): void {
    if (this.timer === undefined) {
      void this.refresh(true);
      this.timer = window.setInterval(() => {
        if (!document.hidden) {
          void this.refresh(this.detailed && this.polls % this.slowEvery === 0);
        }
      }, this.fastMs);
    }
  }

  /** Whether the sidebar is showing: it needs every part, the status bar only the leases. */
  setDetailed(detailed: boolean): void {
    this.detailed = detailed;
    if (detailed) {
      void this.refresh(true);
    }
  }

  stop(): void {
    window.clearInterval(this.timer);
    this.timer = undefined;
  }

  /** Fetch the fast parts, and the slow ones too when `all` (queued if a poll is running). */
  async refresh(all = false): Promise<void> {
    if (this.busy) {
      this.pendingAll = this.pendingAll || all;
      return;
    }
    this.busy = true;
    this.polls += 1;
    const wasConnected = this.state.wallet?.connected === true;
    try {
      const fast = this.detailed || all ? FAST : ALWAYS;
      await Promise.all((all ? [...fast, ...SLOW] : fast).map(part => this.fetch(part)));
      if (!all && this.detailed && !wasConnected && this.state.wallet?.connected) {
        await Promise.all(SLOW.map(part => this.fetch(part))); // just connected: fill every section now
      }
    } finally {
      this.busy = false;
    }
    this.changed.emit();
    if (this.pendingAll) {
      this.pendingAll = false;
      await this.refresh(true);
    }
  }

  async release(leaseId: number): Promise<IReceipt | undefined> {
    return this.act(async () => {
      const { receipt } = await this.api.release(leaseId);
      return receipt;
    });
  }

  async releaseAll(): Promise<IReceipt[] | undefined> {
    return this.act(async () => (await this.api.releaseAll()).receipts);
  }

  setNotice(text: string, error = false): void {
    this.state.notice = { text, error };
    this.changed.emit();
  }

  private async act<T>(action: () => Promise<T>): Promise<T | undefined> {
    try {
      return await action();
    } catch (error) {
      this.setNotice(messageOf(error), true);
      return undefined;
    } finally {
      await this.waitAndRefresh();
    }
  }

  private async waitAndRefresh(): Promise<void> {
    while (this.busy) {
      await new Promise(resolve => window.setTimeout(resolve, 100));
    }
    await this.refresh(true);
  }

  private async fetch(part: Part): Promise<void> {
    try {
      if (part === 'notices') {
        this.takeNotices(await this.api.notices(this.noticesSince));
      } else {
        (this.state as any)[part] = await this.api[part]();
      }
      if (part === 'leases') {
        this.state.leasesAt = Date.now() / 1000;
      }
      delete this.state.errors[part];
    } catch (error) {
      this.state.errors[part] = messageOf(error);
    }
  }

  /** Keep the pending warnings as the server lists them, and add new releases to the recent ones. */
  private takeNotices(reply: INotices): void {
    const before = this.state.notices;
    const released = reply.notices.filter(n => n.kind === 'released');
    const known = reply.last_id < this.noticesSince ? [] : (before?.released ?? []); // a replaced store starts over
    this.state.notices = {
      warnings: reply.warnings,
      released: [...known, ...released].slice(-RECENT_RELEASES),
      newReleases: before ? released.map(n => n.id) : [],
      skew: reply.now - Date.now() / 1000
    };
    this.noticesSince = reply.last_id;
  }
}

/** User-facing text for a failure: the server's own words, never a stack or exception text. */
export function messageOf(error: unknown): string {
  return error instanceof MarketError ? error.message : 'Something went wrong in the GPU market panel.';
}
