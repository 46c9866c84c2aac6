package recon.peers;

import org.apache.flink.table.annotation.DataTypeHint;
import org.apache.flink.table.annotation.FunctionHint;
import org.apache.flink.table.functions.TableFunction;
import org.apache.flink.types.Row;

/**
 * Flink SQL table function decode_event(key BYTES, value BYTES), one row per record (a table function, so the
 * planner calls it once per record however many of its fields a query reads): recon's validation
 * (EventDecoder); `reason` is NULL for a valid event, else recon's reject reason and the fields are NULL.
 */
@FunctionHint(output = @DataTypeHint("ROW<reason STRING, event_id STRING, event_type STRING, trip_id STRING, "
    + "amount DECIMAL(18, 3), currency STRING, occurred_at TIMESTAMP_LTZ(6), rider_id STRING, driver_id STRING, "
    + "payment_id STRING, payout_id STRING, schema_version INT>"))
public class FlinkDecode extends TableFunction<Row> {
    public void eval(byte[] key, byte[] value) {
        EventDecoder.Decoded d = EventDecoder.decode(key, value);
        collect(Row.of(d.reason, d.eventId, d.eventType, d.tripId, d.amount, d.currency, d.occurredAt, d.riderId,
            d.driverId, d.paymentId, d.payoutId, d.reason == null ? Integer.valueOf(d.schemaVersion) : null));
    }
}
