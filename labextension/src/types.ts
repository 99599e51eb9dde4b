/**
 * The JSON shapes of the server extension's REST API under `<base_url>/gpumarket/`.
 * Money is a base-unit decimal string; times are unix seconds.
 */

export interface ITokenInfo {
  decimals: number;
  symbol: string;
}

export type IWallet =
  | ({
      connected: true;
      address: string;
      chain_id: number;
      market: string;
      balance: string;
    } & ITokenInfo)
  | { connected: false; reason: string };

export interface IOffer {
  provider: number;
  gpu: string;
  gpus: number;
  memory_gib: number;
  tflops: number;
  region: string;
  active: boolean;
  reliability: number;
  last_price: string | null;
  min_price: string | null;
}

export interface IOffers extends ITokenInfo {
  offers: IOffer[];
}

export interface ILease {
  lease: number;
  order: number;
  provider: number;
  gpu: string;
  gpus: number;
  price_per_gpu_hour: string;
  started_at: number;
  elapsed_s: number;
  spent: string;
  deposit: string;
  cluster: string;
  student?: string;
}

export interface ILeases extends ITokenInfo {
  leases: ILease[];
  spend_rate_per_hour: string;
  now: number;
}

export interface IReceipt {
  lease_id: number;
  paid_to_provider: string;
  refunded: string;
  fee: string;
  tx_hashes: string[];
}

export interface IHistoryRow {
  lease_id: number;
  provider: number;
  gpus: number;
  seconds: number;
  paid_to_provider: string;
  refunded: string;
  closed_at: number;
}

export interface IHistory extends ITokenInfo {
  history: IHistoryRow[];
  spend_series: [number, string][];
}

export interface IBudget extends ITokenInfo {
  cap: string | null;
  spent: string;
  committed: string;
  remaining: string | null;
}

export interface IStudent {
  address: string;
  cap: string;
  spent: string;
  leases: unknown[];
}

export interface IClass {
  class_id: number;
  pool: string;
  students: IStudent[];
}

export interface IClassroom {
  classes: IClass[];
  decimals?: number;
  symbol?: string;
}

/** A watchdog notice (`GET notices`). `state`: an idle warning is `open` until a task runs
 * (`withdrawn`) or its leases are released (`done`); a release is always `done`. */
export interface INotice {
  id: number;
  lease: number;
  cluster: string;
  kind: 'idle-warning' | 'released';
  text: string;
  time: number;
  state: 'open' | 'withdrawn' | 'done';
  /** Server clock (unix seconds) at which an idle warning's leases are released; null otherwise. */
  release_at: number | null;
}

export interface INotices {
  /** Notices after the `since` asked for, newest last. */
  notices: INotice[];
  /** Idle warnings still pending, whatever `since`. */
  warnings: INotice[];
  /** The `since` to send next time. */
  last_id: number;
  now: number;
}
