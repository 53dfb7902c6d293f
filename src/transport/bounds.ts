// The protocol's fixed bounds: the sizes, queues, intervals and memories both sides rely on.
// docs/protocol.md lists every one in its "Bounds" table, which test/unit/protocol-doc.test.ts holds
// to these values: a change here fails that test until the document says it.

/** The largest data header (frame 0) a receiver decodes. */
export const MAX_HEADER_BYTES = 64 * 1024;
/** The largest message the coordinator decodes from a connection that registered no layer. */
export const UNREGISTERED_MAX_BYTES = 64 * 1024;
/** The largest data message a stage takes before a config says more. */
export const PRE_CONFIG_MAX_BYTES = 64 * 1024;
/** The largest control message a stage takes: a config carrying a layer's resume state. */
export const CONTROL_MAX_BYTES = 2 * 1024 ** 3;
/** The largest message a stage's heartbeat socket takes. */
export const HEARTBEAT_MAX_BYTES = 4 * 1024;
/**
 * Messages a data socket queues per peer before send() waits. Small on purpose: a slow stage
 * must throttle its upstream instead of letting queues grow in memory.
 */
export const DATA_HWM = 4;
/** Messages a stage's data PULL queues per connection: a peer holds one message of its memory. */
export const INBOUND_HWM = 1;
/** Messages a stage reads ahead of the one it handles, and the bytes they may hold. */
export const INBOX_MESSAGES = 2;
export const INBOX_BYTES = 256 * 1024 ** 2;
/** How often a stage without a run says hello again. */
export const HELLO_INTERVAL_MS = 2000;
/** Runs a stage remembers after they end, so their leftover messages are known as such. */
export const PAST_RUNS = 16;
