package recon.peers;

import java.sql.Timestamp;
import org.apache.spark.sql.Row;
import org.apache.spark.sql.RowFactory;
import org.apache.spark.sql.api.java.UDF2;

/**
 * Spark SQL function decode_event(key BINARY, value BINARY) (registered with registerJavaFunction and the
 * struct type of spark_job.py): recon's validation (EventDecoder); `reason` is NULL for a valid event, else
 * recon's reject reason and the other fields are NULL.
 */
public class SparkDecode implements UDF2<byte[], byte[], Row> {
    private static final long serialVersionUID = 1L;

    @Override
    public Row call(byte[] key, byte[] value) {
        EventDecoder.Decoded d = EventDecoder.decode(key, value);
        return RowFactory.create(d.reason, d.eventId, d.eventType, d.tripId, d.amount, d.currency,
            d.occurredAt == null ? null : Timestamp.from(d.occurredAt), d.riderId, d.driverId, d.paymentId,
            d.payoutId, d.reason == null ? Integer.valueOf(d.schemaVersion) : null);
    }
}
