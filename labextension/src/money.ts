/**
 * Token amounts arrive as base-unit decimal strings ("123000000" with 6
 * decimals is 123 TUSD). They are handled as BigInt only: JS numbers lose
 * precision past 2^53 and floats would round money.
 *
 *   formatUnits('123000000', 6)          // "123.00"
 *   formatUnits('417', 6)                // "0.000417"
 *   accrued(3000000n, 2, 90)             // 150000n  (3.00/GPU-h × 2 GPUs × 90 s)
 */

const SECONDS_PER_HOUR = 3600n;

/** A base-unit string or bigint as a decimal text, trailing zeros trimmed to two places. */
export function formatUnits(amount: string | bigint, decimals: number): string {
  const value = typeof amount === 'bigint' ? amount : BigInt(amount);
  const negative = value < 0n;
  const digits = (negative ? -value : value).toString().padStart(decimals + 1, '0');
  const whole = digits.slice(0, digits.length - decimals);
  let fraction = digits.slice(digits.length - decimals).replace(/0+$/, '');
  if (decimals > 0) {
    fraction = fraction.padEnd(Math.min(2, decimals), '0');
  }
  return `${negative ? '-' : ''}${whole}${fraction ? '.' + fraction : ''}`;
}

/** What a lease has accrued after `seconds`, rounded down as the contract does. */
export function accrued(pricePerGpuHour: bigint, gpus: number, seconds: number): bigint {
  const whole = BigInt(Math.max(0, Math.floor(seconds)));
  return (pricePerGpuHour * BigInt(gpus) * whole) / SECONDS_PER_HOUR;
}

/** Formats amounts of one token, e.g. `new TokenFormat(6, 'TUSD').format('2500000')` is "2.50 TUSD". */
export class TokenFormat {
  constructor(
    readonly decimals: number,
    readonly symbol: string
  ) {}

  format(amount: string | bigint | null | undefined): string {
    if (amount === null || amount === undefined) {
      return '—';
    }
    return `${formatUnits(amount, this.decimals)} ${this.symbol}`;
  }

  /** The amount as a plain number of tokens, for chart geometry only (never for sums). */
  approx(amount: string | bigint): number {
    return Number(BigInt(amount)) / 10 ** this.decimals;
  }
}
