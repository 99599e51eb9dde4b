/**
 * Typed calls to the server extension. Requests go through JupyterLab's
 * ServerConnection, which adds the token and XSRF header like any Jupyter API.
 *
 *   const api = new MarketApi();
 *   const { leases } = await api.leases();
 *   await api.release(leases[0].lease);
 *   const { warnings, last_id } = await api.notices(0);
 */
import { URLExt } from '@jupyterlab/coreutils';
import { ServerConnection } from '@jupyterlab/services';

import type { IBudget, IClassroom, IHistory, ILeases, INotices, IOffers, IReceipt, IWallet } from './types';

/** A failed call, carrying only text written for users (the server's "error" field). */
export class MarketError extends Error {
  constructor(
    message: string,
    readonly status: number
  ) {
    super(message);
  }
}

const UNREACHABLE = 'The Jupyter server did not answer; check that it is still running.';
const UNEXPECTED = 'The GPU market server extension gave an unexpected answer; see the server log.';

export class MarketApi {
  constructor(private readonly settings: ServerConnection.ISettings = ServerConnection.makeSettings()) {}

  wallet(): Promise<IWallet> {
    return this.request('wallet');
  }

  offers(): Promise<IOffers> {
    return this.request('offers');
  }

  leases(): Promise<ILeases> {
    return this.request('leases');
  }

  history(): Promise<IHistory> {
    return this.request('history');
  }

  budget(): Promise<IBudget> {
    return this.request('budget');
  }

  classroom(): Promise<IClassroom> {
    return this.request('classroom');
  }

  /** The watchdog's notices after notice `since` (0: all), and the idle warnings still pending. */
  notices(since: number): Promise<INotices> {
    return this.request('notices', {}, { since: String(since) });
  }

  release(leaseId: number): Promise<{ receipt: IReceipt }> {
    return this.request(`leases/${encodeURIComponent(String(leaseId))}/release`, { method: 'POST' });
  }

  releaseAll(): Promise<{ receipts: IReceipt[] }> {
    return this.request('release-all', { method: 'POST' });
  }

  private async request<T>(path: string, init: RequestInit = {}, query: Record<string, string> = {}): Promise<T> {
    const url = URLExt.join(this.settings.baseUrl, 'gpumarket', path) + URLExt.objectToQueryString(query);
    let response: Response;
    try {
      response = await ServerConnection.makeRequest(url, init, this.settings);
    } catch {
      throw new MarketError(UNREACHABLE, 0);
    }
    let body: any = null;
    try {
      body = await response.json();
    } catch {
      body = null;
    }
    if (!response.ok) {
      const message = body && typeof body.error === 'string' ? body.error : UNEXPECTED;
      throw new MarketError(message, response.status);
    }
    if (body === null) {
      throw new MarketError(UNEXPECTED, response.status);
    }
    return body as T;
  }
}
