#!/usr/bin/env node
// An independent OCPP charger for interop tests, built on ocpp-rpc's RPCClient in strict mode
// (every frame, both directions, is validated against ocpp-rpc's own copy of the OCA schemas).
//
//   node charger.mjs --endpoint ws://127.0.0.1:9000/ocpp --identity CP1 --password secret \
//                    --protocol ocpp1.6 --scenario core16 [--id-tag TAG1] [--linger 10]
//
// stdout: one JSON object per line, one per event ("event" is always the first key):
//   connected      {protocol}                              websocket open, subprotocol agreed
//   call-result    {action, request, response}             our call answered with a CALLRESULT
//   call-error     {action, request, error}                our call answered with a CALLERROR
//   incoming-call  {action, params, response | error}      a call from the CSMS and our answer
//   strict-failure {action, outbound, isCall, params, result, error}   schema violation
//   bad-message    {message, error, response}              unparseable / invalid frame received
//   error          {stage, message, ...}                   anything else that went wrong
//   close          {code, reason, by: charger|server}      websocket closed
//   scenario-complete / scenario-aborted {scenario, message}
//   done           {ok, strictFailures, badMessages, errors, callErrors, closedByServer}
//                                                          always the last line
// stderr: nothing on success (diagnostics only).
//
// Lifecycle: connect, run the scenario, then stay connected answering incoming calls until
// --linger seconds have passed, stdin closes (only when stdin is a pipe/socket: /dev/null or a
// TTY are ignored), SIGTERM/SIGINT, or the server closes the connection.
// While lingering, each line on stdin may be a JSON command {"action": "...", "params": {...}}:
// the charger sends that call and prints its call-result / call-error.
// Scenarios are scripts: they go on whatever the CSMS answers (e.g. StartTransaction after an
// Authorize 'Invalid'), except that a BootNotification that is not Accepted is retried after its
// interval until --linger seconds have passed, then the scenario is aborted. A CALLERROR or a
// schema violation aborts the scenario; the charger still lingers, answering incoming calls.
// Incoming calls: 1.6 RemoteStart/RemoteStopTransaction, GetConfiguration, ChangeConfiguration
// (stored, so GetConfiguration shows it; read-only keys are Rejected), Reset, TriggerMessage,
// UnlockConnector, ChangeAvailability; 2.0.1 RequestStart/RequestStopTransaction, GetVariables,
// SetVariables (same store), GetBaseReport (then NotifyReport in two parts), GetTransactionStatus,
// CostUpdated, ClearCache, Reset, TriggerMessage, UnlockConnector, ChangeAvailability; any other
// action gets a NotImplemented CALLERROR.
// Exit code: 0 if the scenario completed with no strict-failure, bad-message, call-error or
// error event; 1 otherwise; 2 for bad command-line usage.

import { parseArgs } from 'node:util';
import fs from 'node:fs';
import readline from 'node:readline';
import ocppRpc from 'ocpp-rpc';

const { RPCClient, createRPCError } = ocppRpc;

// ---------------------------------------------------------------------------------------------
// output

const counters = { strictFailures: 0, badMessages: 0, errors: 0, callErrors: 0 };
const strictErrors = new WeakSet(); // errors already printed as strict-failure

function emit(event, fields = {}) {
  process.stdout.write(JSON.stringify({ event, ...fields }) + '\n');
}

function errorInfo(err) {
  if (err == null) return null;
  if (typeof err !== 'object') return { message: String(err) };
  const info = { name: err.name, message: err.message };
  if (err.rpcErrorCode) info.code = err.rpcErrorCode;
  else if (err.code !== undefined) info.code = err.code;
  if (err.rpcErrorMessage && err.rpcErrorMessage !== err.message) info.rpcMessage = err.rpcErrorMessage;
  if (err.details !== undefined) info.details = err.details;
  return info;
}

const now = () => new Date().toISOString();
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

class ScenarioAbort extends Error {}

// ---------------------------------------------------------------------------------------------
// command line

const USAGE = `usage: node charger.mjs --endpoint ws://HOST:PORT/PATH --identity ID
       [--password PW] [--protocol ocpp1.6|ocpp2.0.1] [--scenario NAME] [--id-tag TAG1]
       [--linger SECONDS] [--connector 1] [--vendor V] [--model M] [--serial S]
       [--meter-start 1000] [--meter-mid 4000] [--meter-stop 8500] [--call-timeout SECONDS]`;

function parseCli(argv) {
  const { values } = parseArgs({
    args: argv,
    strict: true,
    options: {
      endpoint: { type: 'string' },
      identity: { type: 'string' },
      password: { type: 'string' },
      protocol: { type: 'string', default: 'ocpp1.6' },
      scenario: { type: 'string' },
      'id-tag': { type: 'string', default: 'TAG1' },
      linger: { type: 'string', default: '10' },
      connector: { type: 'string', default: '1' },
      vendor: { type: 'string', default: 'ParkChargeInterop' },
      model: { type: 'string', default: 'ocpp-rpc-sim' },
      serial: { type: 'string', default: 'SIM-0001' },
      'meter-start': { type: 'string', default: '1000' },
      'meter-mid': { type: 'string', default: '4000' },
      'meter-stop': { type: 'string', default: '8500' },
      'call-timeout': { type: 'string', default: '30' },
      help: { type: 'boolean', short: 'h', default: false },
    },
  });
  if (values.help) {
    process.stdout.write(USAGE + '\n');
    process.exit(0);
  }
  const proto = PROTOCOLS[values.protocol];
  const problems = [];
  if (!values.endpoint) problems.push('--endpoint is required');
  if (!values.identity) problems.push('--identity is required');
  if (!proto) problems.push(`--protocol must be one of ${Object.keys(PROTOCOLS).join(', ')}`);
  const scenario = values.scenario ?? proto?.defaultScenario;
  if (proto && !proto.scenarios[scenario]) {
    problems.push(
      `--scenario ${scenario} is not defined for ${values.protocol}; ` +
        `known: ${Object.keys(proto.scenarios).join(', ')}`,
    );
  }
  const num = (name) => {
    const v = Number(values[name]);
    if (!Number.isFinite(v) || v < 0) problems.push(`--${name} must be a non-negative number`);
    return v;
  };
  const opts = {
    endpoint: values.endpoint,
    identity: values.identity,
    password: values.password ?? null,
    protocol: values.protocol,
    scenario,
    idTag: values['id-tag'],
    lingerS: num('linger'),
    connectorId: Math.trunc(num('connector')),
    vendor: values.vendor,
    model: values.model,
    serial: values.serial,
    meterStart: Math.trunc(num('meter-start')),
    meterMid: Math.trunc(num('meter-mid')),
    meterStop: Math.trunc(num('meter-stop')),
    callTimeoutMs: num('call-timeout') * 1000,
  };
  if (problems.length) {
    process.stderr.write(problems.join('\n') + '\n' + USAGE + '\n');
    process.exit(2);
  }
  return opts;
}

// ---------------------------------------------------------------------------------------------
// the charger

class Charger {
  constructor(opts) {
    this.opts = opts;
    this.proto = PROTOCOLS[opts.protocol];
    this.state = { config: new Map(this.proto.initialConfig()), seqNo: 0 };
    this.pendingCommands = new Set();
    this.closing = false; // we started the close (not the server)
    this.closedByServer = false;
    this.client = new RPCClient({
      endpoint: opts.endpoint,
      identity: opts.identity,
      password: opts.password,
      protocols: [opts.protocol],
      strictMode: true,
      reconnect: false,
      callTimeoutMs: opts.callTimeoutMs,
      respondWithDetailedErrors: false,
    });
    this.closed = new Promise((resolve) => {
      this.client.once('close', ({ code, reason }) => {
        this.closedByServer = !this.closing;
        emit('close', { code, reason: reason?.toString?.() ?? reason, by: this.closing ? 'charger' : 'server' });
        resolve();
      });
    });
    this.client.on('strictValidationFailure', (ev) => {
      counters.strictFailures++;
      if (ev.error && typeof ev.error === 'object') strictErrors.add(ev.error);
      emit('strict-failure', {
        action: ev.method,
        messageId: ev.messageId,
        outbound: ev.outbound,
        isCall: ev.isCall,
        params: ev.params,
        result: ev.result,
        error: errorInfo(ev.error),
      });
    });
    this.client.on('badMessage', ({ buffer, error, response }) => {
      counters.badMessages++;
      emit('bad-message', {
        message: Buffer.isBuffer(buffer) ? buffer.toString('utf8') : String(buffer),
        error: errorInfo(error),
        response,
      });
    });
    this.client.on('socketError', (err) => {
      counters.errors++;
      emit('error', { stage: 'socket', ...errorInfo(err) });
    });
    for (const [action, handler] of Object.entries(this.proto.handlers)) {
      this.client.handle(action, (call) => this._incoming(action, call.params, () => handler(this, call.params)));
    }
    this.client.handle(({ method, params }) =>
      this._incoming(method, params, () => {
        throw createRPCError('NotImplemented', `charger.mjs does not handle ${method}`);
      }),
    );
  }

  async _incoming(action, params, fn) {
    try {
      const response = await fn();
      emit('incoming-call', { action, params, response });
      return response;
    } catch (err) {
      emit('incoming-call', { action, params, error: errorInfo(err) });
      throw err;
    }
  }

  /** Send a call; print call-result or call-error. Throws ScenarioAbort on failure. */
  async call(action, request) {
    try {
      const response = await this.client.call(action, request);
      emit('call-result', { action, request, response });
      return response;
    } catch (err) {
      if (strictErrors.has(err)) {
        // our request or the CSMS's response broke the schema: printed as strict-failure
      } else if (err?.rpcErrorCode) {
        // a CALLERROR from the CSMS
        counters.callErrors++;
        emit('call-error', { action, request, error: errorInfo(err) });
      } else {
        counters.errors++;
        emit('error', { stage: 'call', action, request, ...errorInfo(err) });
      }
      throw new ScenarioAbort(`${action} failed: ${err?.message}`);
    }
  }

  async connect() {
    try {
      await this.client.connect();
    } catch (err) {
      counters.errors++;
      emit('error', { stage: 'connect', endpoint: this.opts.endpoint, ...errorInfo(err) });
      return false;
    }
    const protocol = this.client.protocol;
    emit('connected', { protocol, identity: this.opts.identity });
    if (protocol !== this.opts.protocol) {
      // ocpp-rpc only validates when a subprotocol was agreed: without one nothing is checked
      counters.errors++;
      emit('error', {
        stage: 'connect',
        message: `server agreed subprotocol '${protocol}', wanted '${this.opts.protocol}'`,
      });
      return false;
    }
    return true;
  }

  /** Boot; on Pending/Rejected retry after the interval (at most --linger seconds in all). */
  async boot() {
    const deadline = Date.now() + this.opts.lingerS * 1000;
    for (;;) {
      const res = await this.call('BootNotification', this.proto.bootRequest(this));
      if (res.status === 'Accepted') return res;
      const waitMs = Math.max(1, res.interval || 1) * 1000;
      if (Date.now() + waitMs > deadline) {
        throw new ScenarioAbort(`BootNotification not accepted (${res.status})`);
      }
      await sleep(waitMs);
    }
  }

  async linger() {
    const waits = [this.closed];
    let timer;
    waits.push(new Promise((resolve) => (timer = setTimeout(resolve, this.opts.lingerS * 1000))));
    for (const sig of ['SIGTERM', 'SIGINT']) {
      waits.push(new Promise((resolve) => process.once(sig, resolve)));
    }
    let rl;
    if (stdinIsPipe()) {
      rl = readline.createInterface({ input: process.stdin });
      waits.push(new Promise((resolve) => rl.once('close', resolve)));
      rl.on('line', (line) => {
        const p = this._stdinCommand(line);
        this.pendingCommands.add(p);
        p.finally(() => this.pendingCommands.delete(p));
      });
    }
    await Promise.race(waits);
    clearTimeout(timer);
    rl?.close();
    // let calls asked for on stdin finish (each is bounded by --call-timeout)
    await Promise.race([Promise.allSettled([...this.pendingCommands]), this.closed]);
  }

  async _stdinCommand(line) {
    if (!line.trim()) return;
    let cmd;
    try {
      cmd = JSON.parse(line);
    } catch (err) {
      counters.errors++;
      emit('error', { stage: 'stdin', line, message: err.message });
      return;
    }
    try {
      await this.call(cmd.action, cmd.params ?? {});
    } catch {
      // already printed
    }
  }

  async close() {
    this.closing = true;
    if (this.client.state === RPCClient.OPEN || this.client.state === RPCClient.CONNECTING) {
      await this.client.close({ code: 1000, reason: 'charger.mjs done' });
    }
  }
}

function stdinIsPipe() {
  try {
    const st = fs.fstatSync(0);
    return st.isFIFO() || st.isSocket();
  } catch {
    return false;
  }
}

// ---------------------------------------------------------------------------------------------
// OCPP 1.6

const ocpp16 = {
  defaultScenario: 'core16',

  initialConfig: () => [
    ['HeartbeatInterval', { readonly: false, value: '300' }],
    ['MeterValueSampleInterval', { readonly: false, value: '60' }],
    ['NumberOfConnectors', { readonly: true, value: '1' }],
  ],

  bootRequest: (c) => ({
    chargePointVendor: c.opts.vendor.slice(0, 20),
    chargePointModel: c.opts.model.slice(0, 20),
    chargePointSerialNumber: c.opts.serial.slice(0, 25),
    firmwareVersion: 'charger.mjs-1',
  }),

  status: (c, status) => ({
    connectorId: c.opts.connectorId,
    errorCode: 'NoError',
    status,
    timestamp: now(),
  }),

  handlers: {
    RemoteStartTransaction: () => ({ status: 'Accepted' }),
    RemoteStopTransaction: () => ({ status: 'Accepted' }),
    GetConfiguration: (c, params) => {
      const config = c.state.config;
      const requested = params.key?.length ? params.key : [...config.keys()];
      const configurationKey = [];
      const unknownKey = [];
      for (const key of requested) {
        const entry = config.get(key);
        if (entry) configurationKey.push({ key, readonly: entry.readonly, value: entry.value });
        else unknownKey.push(key);
      }
      return { configurationKey, unknownKey };
    },
    ChangeConfiguration: (c, params) => {
      const entry = c.state.config.get(params.key);
      if (entry?.readonly) return { status: 'Rejected' };
      c.state.config.set(params.key, { readonly: false, value: params.value });
      return { status: 'Accepted' };
    },
    Reset: () => ({ status: 'Accepted' }),
    TriggerMessage: () => ({ status: 'Accepted' }),
    UnlockConnector: () => ({ status: 'Unlocked' }),
    ChangeAvailability: () => ({ status: 'Accepted' }),
  },

  scenarios: {
    'connect-only': async (c) => {
      await c.boot();
    },

    core16: async (c) => {
      const { connectorId, idTag, meterStart, meterMid, meterStop } = c.opts;
      await c.boot();
      await c.call('Heartbeat', {});
      await c.call('StatusNotification', ocpp16.status(c, 'Available'));
      await c.call('Authorize', { idTag });
      await c.call('StatusNotification', ocpp16.status(c, 'Preparing'));
      const start = await c.call('StartTransaction', {
        connectorId,
        idTag,
        meterStart,
        timestamp: now(),
      });
      const transactionId = start.transactionId;
      await c.call('MeterValues', {
        connectorId,
        transactionId,
        meterValue: [
          {
            timestamp: now(),
            sampledValue: [
              {
                value: String(meterMid),
                context: 'Sample.Periodic',
                measurand: 'Energy.Active.Import.Register',
                location: 'Outlet',
                unit: 'Wh',
              },
              {
                value: '7200',
                context: 'Sample.Periodic',
                measurand: 'Power.Active.Import',
                location: 'Outlet',
                unit: 'W',
              },
            ],
          },
        ],
      });
      const stopTime = now();
      await c.call('StopTransaction', {
        transactionId,
        idTag,
        meterStop,
        timestamp: stopTime,
        reason: 'Local',
        transactionData: [
          {
            timestamp: stopTime,
            sampledValue: [
              {
                value: String(meterStop),
                context: 'Transaction.End',
                measurand: 'Energy.Active.Import.Register',
                location: 'Outlet',
                unit: 'Wh',
              },
            ],
          },
        ],
      });
    },
  },
};

// ---------------------------------------------------------------------------------------------
// OCPP 2.0.1

// component/variable[instance] -> stored key, for GetVariables / SetVariables / NotifyReport
const varKey = (component, variable) =>
  `${component.name}/${variable.name}${variable.instance ? `[${variable.instance}]` : ''}`;

// a 2.0.1 meter value: one Energy.Active.Import.Register reading (Wh), plus power when given
function meter201(context, wh, powerW) {
  const sampledValue = [
    { value: wh, context, measurand: 'Energy.Active.Import.Register', location: 'Outlet', unitOfMeasure: { unit: 'Wh' } },
  ];
  if (powerW !== undefined) {
    sampledValue.push({ value: powerW, context, measurand: 'Power.Active.Import', location: 'Outlet', unitOfMeasure: { unit: 'W' } });
  }
  return [{ timestamp: now(), sampledValue }];
}

const ocpp201 = {
  defaultScenario: 'connect-only',

  // component/variable[instance] -> value, for GetVariables / SetVariables / GetBaseReport
  initialConfig: () => [
    ['OCPPCommCtrlr/HeartbeatInterval', { readonly: false, value: '300' }],
    ['SampledDataCtrlr/TxUpdatedInterval', { readonly: false, value: '60' }],
    ['AuthCtrlr/AuthorizeRemoteStart', { readonly: false, value: 'true' }],
    ['SecurityCtrlr/SecurityProfile', { readonly: true, value: '1' }],
    ['SecurityCtrlr/BasicAuthPassword', { readonly: false, writeOnly: true, value: '' }],
    ['TariffCostCtrlr/Available[Cost]', { readonly: true, value: 'true' }],
    ['TariffCostCtrlr/Enabled[Cost]', { readonly: false, value: 'true' }],
    ['TariffCostCtrlr/Currency', { readonly: false, value: 'JPY' }],
    ['CustomizationCtrlr/CustomImplementationEnabled[org.openchargealliance.costmsg]', { readonly: true, value: 'true' }],
  ],

  bootRequest: (c) => ({
    reason: 'PowerUp',
    chargingStation: {
      vendorName: c.opts.vendor.slice(0, 50),
      model: c.opts.model.slice(0, 20),
      serialNumber: c.opts.serial.slice(0, 25),
      firmwareVersion: 'charger.mjs-1',
    },
  }),

  status: (c, connectorStatus) => ({
    timestamp: now(),
    connectorStatus,
    evseId: 1,
    connectorId: c.opts.connectorId,
  }),

  // NotifyReport (B07) of the whole configuration, in two parts (tbc), after GetBaseReport
  async sendReport(c, requestId) {
    const reportData = [...c.state.config.entries()].map(([key, entry]) => {
      const m = /^([^/]+)\/([^[]+)(?:\[(.+)\])?$/.exec(key);
      const variable = { name: m[2] };
      if (m[3]) variable.instance = m[3];
      const attribute = { type: 'Actual', mutability: entry.readonly ? 'ReadOnly' : entry.writeOnly ? 'WriteOnly' : 'ReadWrite' };
      if (!entry.writeOnly) attribute.value = entry.value;
      return {
        component: { name: m[1] },
        variable,
        variableAttribute: [attribute],
        variableCharacteristics: { dataType: 'string', supportsMonitoring: false },
      };
    });
    const half = Math.ceil(reportData.length / 2);
    const parts = [reportData.slice(0, half), reportData.slice(half)];
    for (const [seqNo, part] of parts.entries()) {
      await c.call('NotifyReport', {
        requestId,
        generatedAt: now(),
        seqNo,
        tbc: seqNo < parts.length - 1,
        reportData: part,
      });
    }
  },

  handlers: {
    RequestStartTransaction: () => ({ status: 'Accepted' }),
    RequestStopTransaction: () => ({ status: 'Accepted' }),
    GetVariables: (c, params) => ({
      getVariableResult: params.getVariableData.map(({ component, variable, attributeType }) => {
        const entry = c.state.config.get(varKey(component, variable));
        const result = { component, variable };
        if (attributeType) result.attributeType = attributeType;
        if (!entry) return { attributeStatus: 'UnknownVariable', ...result };
        if (entry.writeOnly) return { attributeStatus: 'Rejected', ...result };
        return { attributeStatus: 'Accepted', attributeValue: entry.value, ...result };
      }),
    }),
    SetVariables: (c, params) => ({
      setVariableResult: params.setVariableData.map(({ component, variable, attributeValue, attributeType }) => {
        const key = varKey(component, variable);
        const entry = c.state.config.get(key);
        const result = { component, variable };
        if (attributeType) result.attributeType = attributeType;
        if (entry?.readonly) return { attributeStatus: 'Rejected', ...result };
        c.state.config.set(key, { readonly: false, writeOnly: entry?.writeOnly, value: attributeValue });
        return { attributeStatus: 'Accepted', ...result };
      }),
    }),
    GetBaseReport: (c, params) => {
      const job = ocpp201.sendReport(c, params.requestId).catch(() => {});
      c.pendingCommands.add(job);
      job.finally(() => c.pendingCommands.delete(job));
      return { status: 'Accepted' };
    },
    GetTransactionStatus: (c, params) => ({
      messagesInQueue: false,
      ...(params.transactionId ? { ongoingIndicator: c.state.transactionId === params.transactionId } : {}),
    }),
    CostUpdated: () => ({}),
    ClearCache: () => ({ status: 'Accepted' }),
    Reset: () => ({ status: 'Accepted' }),
    TriggerMessage: () => ({ status: 'Accepted' }),
    UnlockConnector: () => ({ status: 'Unlocked' }),
    ChangeAvailability: () => ({ status: 'Accepted' }),
  },

  scenarios: {
    'connect-only': async (c) => {
      await c.boot();
    },

    // E01-E07 with an RFID card: Authorize, TransactionEvent Started / Updated / Ended
    core201: async (c) => {
      const { connectorId, idTag, meterStart, meterMid, meterStop } = c.opts;
      const idToken = { idToken: idTag, type: 'ISO14443' };
      const evse = { id: 1, connectorId };
      const transactionId = `${c.opts.identity}-${Date.now()}`.slice(0, 36);
      c.state.transactionId = transactionId;
      await c.boot();
      await c.call('Heartbeat', {});
      await c.call('StatusNotification', ocpp201.status(c, 'Available'));
      await c.call('Authorize', { idToken });
      await c.call('StatusNotification', ocpp201.status(c, 'Occupied'));
      const event = (eventType, triggerReason, transactionInfo, extra) =>
        c.call('TransactionEvent', {
          eventType,
          timestamp: now(),
          triggerReason,
          seqNo: c.state.seqNo++,
          transactionInfo: { transactionId, ...transactionInfo },
          ...extra,
        });
      await event('Started', 'Authorized', { chargingState: 'EVConnected' }, {
        evse,
        idToken,
        meterValue: meter201('Transaction.Begin', meterStart),
      });
      await event('Updated', 'ChargingStateChanged', { chargingState: 'Charging' }, {
        meterValue: meter201('Sample.Periodic', meterMid, 7200),
      });
      await event('Ended', 'StopAuthorized', { chargingState: 'EVConnected', stoppedReason: 'Local' }, {
        idToken,
        meterValue: meter201('Transaction.End', meterStop),
      });
      c.state.transactionId = null;
    },
  },
};

// protocol -> {defaultScenario, scenarios: {name: async (charger) => void}, handlers, ...}
const PROTOCOLS = {
  'ocpp1.6': ocpp16,
  'ocpp2.0.1': ocpp201,
};

// ---------------------------------------------------------------------------------------------

async function main() {
  let opts;
  try {
    opts = parseCli(process.argv.slice(2));
  } catch (err) {
    process.stderr.write(`${err.message}\n${USAGE}\n`);
    process.exit(2);
  }
  const charger = new Charger(opts);
  let scenarioOk = false;
  if (await charger.connect()) {
    try {
      await PROTOCOLS[opts.protocol].scenarios[opts.scenario](charger);
      scenarioOk = true;
      emit('scenario-complete', { scenario: opts.scenario });
    } catch (err) {
      if (!(err instanceof ScenarioAbort)) {
        counters.errors++;
        emit('error', { stage: 'scenario', scenario: opts.scenario, ...errorInfo(err) });
      } else {
        emit('scenario-aborted', { scenario: opts.scenario, message: err.message });
      }
    }
    if (charger.client.state === RPCClient.OPEN) await charger.linger();
    await charger.close();
  }
  const ok =
    scenarioOk &&
    counters.strictFailures === 0 &&
    counters.badMessages === 0 &&
    counters.errors === 0 &&
    counters.callErrors === 0;
  emit('done', { ok, ...counters, closedByServer: charger.closedByServer });
  process.exitCode = ok ? 0 : 1;
  // don't wait for stdin or timers left by the library
  setImmediate(() => process.exit(process.exitCode));
}

main().catch((err) => {
  emit('error', { stage: 'main', ...errorInfo(err) });
  emit('done', { ok: false, ...counters, errors: counters.errors + 1 });
  process.exit(1);
});
