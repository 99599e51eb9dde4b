/**
 * Instructor view: every class this account sponsors, each student's spend
 * against their cap and how many leases they hold.
 */
import { h, shortAddress, table } from './dom';
import { TokenFormat } from './money';
import type { IClassroom } from './types';

export function classroomView(classroom: IClassroom, fallback: TokenFormat): HTMLElement {
  const fmt = classroom.decimals !== undefined ? new TokenFormat(classroom.decimals, classroom.symbol ?? '') : fallback;
  return h(
    'div',
    { 'data-testid': 'gpumarket-classroom' },
    ...classroom.classes.map(cls =>
      h(
        'div',
        { class: 'jp-gpumarket-class', 'data-testid': `gpumarket-class-${cls.class_id}` },
        h('div', { class: 'jp-gpumarket-kv' }, `Class ${cls.class_id} · pool ${fmt.format(cls.pool)}`),
        table(
          `gpumarket-students-${cls.class_id}`,
          ['Student', 'Spent / cap', 'Leases'],
          cls.students.map(student =>
            h(
              'tr',
              { 'data-student': student.address },
              h('td', { title: student.address }, shortAddress(student.address)),
              h('td', {}, `${fmt.format(student.spent)} / ${fmt.format(student.cap)}`, capBar(student.spent, student.cap)),
              h('td', {}, String(student.leases.length))
            )
          )
        )
      )
    )
  );
}

/** A bar filled to spent ÷ cap (in whole percent, computed in BigInt). */
function capBar(spent: string, cap: string): HTMLElement {
  const capUnits = BigInt(cap);
  const percent = capUnits > 0n ? Number((BigInt(spent) * 100n) / capUnits) : 0;
  const fill = h('div', { class: 'jp-gpumarket-bar-fill', style: `width: ${Math.min(100, percent)}%` });
  if (percent >= 90) {
    fill.classList.add('jp-mod-warn');
  }
  return h('div', { class: 'jp-gpumarket-bar', title: `${percent}% of the cap` }, fill);
}
