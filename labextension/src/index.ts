/**
 * JupyterLab plugin: the GPU market sidebar, a status bar item with the
 * current spend rate, a palette command that releases every lease, and
 * notifications for the watchdog's idle warnings and releases.
 */
import { ILabShell, ILayoutRestorer, JupyterFrontEnd, JupyterFrontEndPlugin } from '@jupyterlab/application';
import { Dialog, ICommandPalette, showDialog } from '@jupyterlab/apputils';
import { IStatusBar } from '@jupyterlab/statusbar';
import { LabIcon } from '@jupyterlab/ui-components';

import { MarketApi } from './api';
import { MarketModel } from './model';
import { NoticeAlerts } from './notices';
import { TokenFormat } from './money';
import { MarketPanel, PANEL_ID } from './sidebar';
import { SpendStatus } from './statusbar';

export const COMMANDS = {
  open: 'gpumarket:open',
  releaseAll: 'gpumarket:release-all'
};

const gpuIcon = new LabIcon({
  name: 'jupyter-gpumarket:gpu',
  svgstr:
    '<svg xmlns="http://www.w3.org/2000/svg" width="16" height="16" viewBox="0 0 24 24">' +
    '<g class="jp-icon3" fill="#616161"><path d="M4 7h14a2 2 0 0 1 2 2v1h2v2h-2v1h2v2h-2v1a2 2 0 0 1-2 2H4z' +
    'M6 9v7h12V9zm2 2h3v3H8zm5 0h3v3h-3zM5 19h2v2H5zm4 0h2v2H9z"/></g></svg>'
});

const plugin: JupyterFrontEndPlugin<void> = {
  id: 'jupyter-gpumarket:plugin',
  description: 'GPU market sidebar, spend status and release-all command.',
  autoStart: true,
  requires: [ILabShell],
  optional: [ICommandPalette, IStatusBar, ILayoutRestorer],
  activate: (
    app: JupyterFrontEnd,
    shell: ILabShell,
    palette: ICommandPalette | null,
    statusBar: IStatusBar | null,
    restorer: ILayoutRestorer | null
  ) => {
    const model = new MarketModel(new MarketApi());
    const panel = new MarketPanel(model);
    panel.title.icon = gpuIcon;
    panel.title.caption = 'GPU market';
    shell.add(panel, 'right', { rank: 600 });
    restorer?.add(panel, PANEL_ID);
    new NoticeAlerts(model, () => shell.activateById(PANEL_ID));
    model.start(); // the status bar needs the spend rate, and idle warnings must show, even while the panel is closed

    app.commands.addCommand(COMMANDS.open, {
      label: 'GPU market: open sidebar',
      execute: () => shell.activateById(PANEL_ID)
    });
    app.commands.addCommand(COMMANDS.releaseAll, {
      label: 'GPU market: release all leases',
      caption: 'Close every live lease of this account; providers are paid what accrued, the rest is refunded',
      execute: async () => {
        const count = model.state.leases?.leases.length ?? 0;
        const answer = await showDialog({
          title: 'Release all GPU leases?',
          body: count ? `${count} live lease(s) will close now.` : 'No live leases are known right now; check the chain anyway?',
          buttons: [Dialog.cancelButton(), Dialog.warnButton({ label: 'Release all' })]
        });
        if (!answer.button.accept) {
          return;
        }
        const receipts = await model.releaseAll();
        if (receipts) {
          const info = model.state.leases ?? model.state.history;
          const fmt = new TokenFormat(info?.decimals ?? 0, info?.symbol ?? '');
          const refunded = receipts.reduce((sum, r) => sum + BigInt(r.refunded), 0n);
          model.setNotice(`Released ${receipts.length} lease(s); refunded ${fmt.format(refunded)}.`);
        }
      }
    });
    palette?.addItem({ command: COMMANDS.releaseAll, category: 'GPU market' });
    palette?.addItem({ command: COMMANDS.open, category: 'GPU market' });

    statusBar?.registerStatusItem('jupyter-gpumarket:spend', {
      item: new SpendStatus(model, () => shell.activateById(PANEL_ID)),
      align: 'left',
      rank: 50
    });
  }
};

export default plugin;
