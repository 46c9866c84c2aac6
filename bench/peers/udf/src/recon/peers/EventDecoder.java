package recon.peers;

import java.math.BigDecimal;
import java.nio.ByteBuffer;
import java.nio.charset.CharacterCodingException;
import java.nio.charset.CodingErrorAction;
import java.nio.charset.StandardCharsets;
import java.time.Instant;
import java.time.OffsetDateTime;
import java.time.format.DateTimeFormatter;
import java.time.format.DateTimeParseException;
import java.time.temporal.ChronoUnit;
import java.util.Arrays;
import java.util.HashMap;
import java.util.Map;

/**
 * The peers' copy of recon's validating decoder (schemas/src/decode.rs): Kafka key + JSON payload
 * to the event's fields, or the one reject reason recon would give, checked in recon's order:
 * size, UTF-8, JSON, object, a known field repeated, then each field in envelope order, then the key.
 * Plain Java with no dependency, so that Flink (FlinkDecode) and Spark (SparkDecode) share it.
 *
 * Known differences from recon's decoder, none of which the generator's traffic exercises:
 * occurred_at is parsed with java.time's ISO_OFFSET_DATE_TIME (chrono's RFC 3339 parser also takes
 * a space or a lower-case 't' as separator, Java's takes offsets with seconds); JSON nesting deeper
 * than 128 is not_json in both, but number syntax corner cases (e.g. 1e400) may classify differently.
 */
public final class EventDecoder {
    public static final int PAYLOAD_BYTES_MAX = 64 * 1024;
    public static final int ID_BYTES_MAX = 128;
    static final String[] FIELDS = {"event_id", "event_type", "trip_id", "amount", "currency", "occurred_at",
        "rider_id", "driver_id", "payment_id", "payout_id", "schema_version"};
    static final String[] EVENT_TYPES = {"trip_charge", "rider_payment", "driver_payout", "platform_fee", "refund",
        "adjustment"};
    static final Map<String, Integer> MINOR_UNITS = new HashMap<>();
    static {
        String[][] table = {{"AED", "2"}, {"ARS", "2"}, {"AUD", "2"}, {"BHD", "3"}, {"BRL", "2"}, {"CAD", "2"},
            {"CHF", "2"}, {"CLP", "0"}, {"CNY", "2"}, {"COP", "2"}, {"CZK", "2"}, {"DKK", "2"}, {"EGP", "2"},
            {"EUR", "2"}, {"GBP", "2"}, {"HKD", "2"}, {"HUF", "2"}, {"IDR", "2"}, {"ILS", "2"}, {"INR", "2"},
            {"ISK", "0"}, {"JOD", "3"}, {"JPY", "0"}, {"KES", "2"}, {"KRW", "0"}, {"KWD", "3"}, {"MXN", "2"},
            {"MYR", "2"}, {"NGN", "2"}, {"NOK", "2"}, {"NZD", "2"}, {"OMR", "3"}, {"PEN", "2"}, {"PHP", "2"},
            {"PKR", "2"}, {"PLN", "2"}, {"PYG", "0"}, {"QAR", "2"}, {"SAR", "2"}, {"SEK", "2"}, {"SGD", "2"},
            {"THB", "2"}, {"TND", "3"}, {"TRY", "2"}, {"TWD", "2"}, {"UGX", "0"}, {"USD", "2"}, {"VND", "0"},
            {"ZAR", "2"}};
        for (String[] row : table) {
            MINOR_UNITS.put(row[0], Integer.parseInt(row[1]));
        }
    }
    static final Instant MIN = Instant.parse("2000-01-01T00:00:00Z");
    static final Instant END = Instant.parse("2100-01-01T00:00:00Z");
    static final int INTEGER_DIGITS = 15;

    /** One decoded record: reason == null means valid and every field is set (optional ids may be null). */
    public static final class Decoded {
        public String reason;
        public String eventId;
        public String eventType;
        public String tripId;
        public BigDecimal amount;
        public String currency;
        public Instant occurredAt;
        public String riderId;
        public String driverId;
        public String paymentId;
        public String payoutId;
        public int schemaVersion;

        static Decoded reject(String reason) {
            Decoded d = new Decoded();
            d.reason = reason;
            return d;
        }
    }

    /** Thrown inside the decoder to carry a reject reason out. */
    static final class Reject extends Exception {
        final String reason;

        Reject(String reason) {
            super(reason, null, false, false);
            this.reason = reason;
        }
    }

    private EventDecoder() {}

    public static Decoded decode(byte[] key, byte[] payload) {
        try {
            return decodeOrThrow(key, payload);
        } catch (Reject r) {
            return Decoded.reject(r.reason);
        }
    }

    static Decoded decodeOrThrow(byte[] key, byte[] payload) throws Reject {
        if (payload == null) {
            // A tombstone: recon reads it as an empty payload, which is not JSON.
            payload = new byte[0];
        }
        if (payload.length > PAYLOAD_BYTES_MAX) {
            throw new Reject("payload_too_large");
        }
        String text;
        try {
            text = StandardCharsets.UTF_8.newDecoder().onMalformedInput(CodingErrorAction.REPORT)
                .onUnmappableCharacter(CodingErrorAction.REPORT).decode(ByteBuffer.wrap(payload)).toString();
        } catch (CharacterCodingException e) {
            throw new Reject("not_utf8");
        }
        Object[] fields = new Json(text).topLevel();
        Decoded d = new Decoded();
        String eventId = id(required(fields, 0));
        if (!isHyphenatedUuid(eventId)) {
            throw new Reject("invalid_event_id");
        }
        d.eventId = eventId.toLowerCase(java.util.Locale.ROOT);
        String eventType = string(required(fields, 1));
        if (!Arrays.asList(EVENT_TYPES).contains(eventType)) {
            throw new Reject("unknown_event_type");
        }
        d.eventType = eventType;
        d.tripId = id(required(fields, 2));
        String amount = string(required(fields, 3));
        int decimals = amountSyntax(amount);
        String currency = string(required(fields, 4));
        Integer minor = MINOR_UNITS.get(currency);
        if (minor == null) {
            throw new Reject("unknown_currency");
        }
        if (decimals > minor) {
            throw new Reject("amount_scale");
        }
        d.amount = new BigDecimal(amount).setScale(3);
        d.currency = currency;
        d.occurredAt = timestamp(string(required(fields, 5)));
        d.riderId = optionalId(fields[6]);
        d.driverId = optionalId(fields[7]);
        d.paymentId = optionalId(fields[8]);
        d.payoutId = optionalId(fields[9]);
        Object version = required(fields, 10);
        if (!(version instanceof Long)) {
            throw new Reject("wrong_type");
        }
        if ((Long) version != 1L) {
            throw new Reject("unsupported_schema_version");
        }
        d.schemaVersion = 1;
        if (key != null && !Arrays.equals(key, d.tripId.getBytes(StandardCharsets.UTF_8))) {
            throw new Reject("key_mismatch");
        }
        return d;
    }

    static Object required(Object[] fields, int i) throws Reject {
        if (fields[i] == null) {
            throw new Reject("missing_field");
        }
        return fields[i];
    }

    static String string(Object v) throws Reject {
        if (!(v instanceof String)) {
            throw new Reject("wrong_type");
        }
        return (String) v;
    }

    static String id(Object v) throws Reject {
        String s = string(v);
        if (s.isEmpty()) {
            throw new Reject("empty_id");
        }
        if (s.getBytes(StandardCharsets.UTF_8).length > ID_BYTES_MAX) {
            throw new Reject("id_too_long");
        }
        return s;
    }

    static String optionalId(Object v) throws Reject {
        return (v == null || v == Json.NULL) ? null : id(v);
    }

    static boolean isHyphenatedUuid(String s) {
        if (s.length() != 36) {
            return false;
        }
        for (int i = 0; i < 36; i++) {
            char c = s.charAt(i);
            boolean dash = i == 8 || i == 13 || i == 18 || i == 23;
            if (dash ? c != '-' : Character.digit(c, 16) < 0 || c > 'f') {
                return false;
            }
        }
        return true;
    }

    /** recon's check_amount_syntax: pattern, sign, integer digits; returns the number of decimals. */
    static int amountSyntax(String s) throws Reject {
        boolean negative = s.startsWith("-");
        String unsigned = negative ? s.substring(1) : s;
        int dot = unsigned.indexOf('.');
        String integer = dot < 0 ? unsigned : unsigned.substring(0, dot);
        String frac = dot < 0 ? null : unsigned.substring(dot + 1);
        boolean ok = digits(integer) && (integer.equals("0") || !integer.startsWith("0")) && (frac == null || digits(frac));
        if (!ok) {
            throw new Reject("invalid_amount");
        }
        if (negative) {
            throw new Reject("negative_amount");
        }
        if (integer.length() > INTEGER_DIGITS) {
            throw new Reject("amount_overflow");
        }
        return frac == null ? 0 : frac.length();
    }

    static boolean digits(String t) {
        if (t.isEmpty()) {
            return false;
        }
        for (int i = 0; i < t.length(); i++) {
            char c = t.charAt(i);
            if (c < '0' || c > '9') {
                return false;
            }
        }
        return true;
    }

    static Instant timestamp(String s) throws Reject {
        Instant t;
        try {
            t = OffsetDateTime.parse(s, DateTimeFormatter.ISO_OFFSET_DATE_TIME).toInstant();
        } catch (DateTimeParseException e) {
            throw new Reject("invalid_timestamp");
        }
        if (t.isBefore(MIN) || !t.isBefore(END)) {
            throw new Reject("timestamp_out_of_range");
        }
        return t.truncatedTo(ChronoUnit.MICROS);
    }

    /**
     * A strict JSON reader (RFC 8259, as serde_json: no trailing commas, no comments, no lone surrogates,
     * nesting at most 128) that keeps the top-level values of the known fields only.
     */
    static final class Json {
        static final Object NULL = new Object();
        static final Object OTHER = new Object();
        final String s;
        int i;
        int depth;

        Json(String s) {
            this.s = s;
        }

        /** The known fields' values (String, Long, NULL, OTHER), indexed as FIELDS; throws not_json etc. */
        Object[] topLevel() throws Reject {
            ws();
            if (i >= s.length()) {
                throw new Reject("not_json");
            }
            Object[] fields = new Object[FIELDS.length];
            boolean object = s.charAt(i) == '{';
            String duplicate = null;
            if (object) {
                i++;
                ws();
                if (peek() == '}') {
                    i++;
                } else {
                    while (true) {
                        ws();
                        if (peek() != '"') {
                            throw new Reject("not_json");
                        }
                        String name = string();
                        ws();
                        expect(':');
                        int known = Arrays.asList(FIELDS).indexOf(name);
                        Object v = value(known >= 0);
                        if (known >= 0) {
                            if (fields[known] != null) {
                                duplicate = duplicate == null ? name : duplicate;
                            } else {
                                fields[known] = v;
                            }
                        }
                        ws();
                        char c = peek();
                        i++;
                        if (c == '}') {
                            break;
                        }
                        if (c != ',') {
                            throw new Reject("not_json");
                        }
                    }
                }
            } else {
                value(false);
            }
            ws();
            if (i != s.length()) {
                throw new Reject("not_json");
            }
            if (!object) {
                throw new Reject("not_object");
            }
            if (duplicate != null) {
                throw new Reject("duplicate_field");
            }
            return fields;
        }

        char peek() throws Reject {
            if (i >= s.length()) {
                throw new Reject("not_json");
            }
            return s.charAt(i);
        }

        void expect(char c) throws Reject {
            if (peek() != c) {
                throw new Reject("not_json");
            }
            i++;
        }

        void ws() {
            while (i < s.length()) {
                char c = s.charAt(i);
                if (c != ' ' && c != '\t' && c != '\n' && c != '\r') {
                    return;
                }
                i++;
            }
        }

        /** A value; `keep` returns strings and integers as such (else OTHER). */
        Object value(boolean keep) throws Reject {
            ws();
            char c = peek();
            switch (c) {
                case '"':
                    return string();
                case '{':
                case '[':
                    container(c);
                    return OTHER;
                case 't':
                    literal("true");
                    return OTHER;
                case 'f':
                    literal("false");
                    return OTHER;
                case 'n':
                    literal("null");
                    return NULL;
                default:
                    return number();
            }
        }

        void literal(String word) throws Reject {
            if (!s.startsWith(word, i)) {
                throw new Reject("not_json");
            }
            i += word.length();
        }

        void container(char open) throws Reject {
            if (++depth > 128) {
                throw new Reject("not_json");
            }
            char close = open == '{' ? '}' : ']';
            i++;
            ws();
            if (peek() == close) {
                i++;
                depth--;
                return;
            }
            while (true) {
                ws();
                if (open == '{') {
                    if (peek() != '"') {
                        throw new Reject("not_json");
                    }
                    string();
                    ws();
                    expect(':');
                }
                value(false);
                ws();
                char c = peek();
                i++;
                if (c == close) {
                    depth--;
                    return;
                }
                if (c != ',') {
                    throw new Reject("not_json");
                }
            }
        }

        /** An integer that fits a long as Long; any other valid number as OTHER. */
        Object number() throws Reject {
            int start = i;
            if (i < s.length() && s.charAt(i) == '-') {
                i++;
            }
            int intStart = i;
            while (i < s.length() && s.charAt(i) >= '0' && s.charAt(i) <= '9') {
                i++;
            }
            int intLen = i - intStart;
            if (intLen == 0 || (intLen > 1 && s.charAt(intStart) == '0')) {
                throw new Reject("not_json");
            }
            boolean integer = true;
            if (i < s.length() && s.charAt(i) == '.') {
                integer = false;
                i++;
                int f = i;
                while (i < s.length() && s.charAt(i) >= '0' && s.charAt(i) <= '9') {
                    i++;
                }
                if (i == f) {
                    throw new Reject("not_json");
                }
            }
            if (i < s.length() && (s.charAt(i) == 'e' || s.charAt(i) == 'E')) {
                integer = false;
                i++;
                if (i < s.length() && (s.charAt(i) == '+' || s.charAt(i) == '-')) {
                    i++;
                }
                int e = i;
                while (i < s.length() && s.charAt(i) >= '0' && s.charAt(i) <= '9') {
                    i++;
                }
                if (i == e) {
                    throw new Reject("not_json");
                }
            }
            if (integer) {
                try {
                    return Long.parseLong(s.substring(start, i));
                } catch (NumberFormatException e) {
                    return OTHER; // beyond i64: serde_json's as_i64() is None too
                }
            }
            return OTHER;
        }

        String string() throws Reject {
            expect('"');
            StringBuilder out = null;
            int run = i;
            while (true) {
                if (i >= s.length()) {
                    throw new Reject("not_json");
                }
                char c = s.charAt(i);
                if (c == '"') {
                    String tail = s.substring(run, i);
                    i++;
                    return out == null ? tail : out.append(tail).toString();
                }
                if (c < 0x20) {
                    throw new Reject("not_json");
                }
                if (c != '\\') {
                    i++;
                    continue;
                }
                if (out == null) {
                    out = new StringBuilder();
                }
                out.append(s, run, i);
                i++;
                char e = peek();
                i++;
                switch (e) {
                    case '"': out.append('"'); break;
                    case '\\': out.append('\\'); break;
                    case '/': out.append('/'); break;
                    case 'b': out.append('\b'); break;
                    case 'f': out.append('\f'); break;
                    case 'n': out.append('\n'); break;
                    case 'r': out.append('\r'); break;
                    case 't': out.append('\t'); break;
                    case 'u': {
                        char u = hex4();
                        if (Character.isHighSurrogate(u)) {
                            if (!s.startsWith("\\u", i)) {
                                throw new Reject("not_json");
                            }
                            i += 2;
                            char low = hex4();
                            if (!Character.isLowSurrogate(low)) {
                                throw new Reject("not_json");
                            }
                            out.append(u).append(low);
                        } else if (Character.isLowSurrogate(u)) {
                            throw new Reject("not_json");
                        } else {
                            out.append(u);
                        }
                        break;
                    }
                    default:
                        throw new Reject("not_json");
                }
                run = i;
            }
        }

        char hex4() throws Reject {
            if (i + 4 > s.length()) {
                throw new Reject("not_json");
            }
            int v = 0;
            for (int k = 0; k < 4; k++) {
                int d = Character.digit(s.charAt(i + k), 16);
                if (d < 0 || s.charAt(i + k) > 'f') {
                    throw new Reject("not_json");
                }
                v = v * 16 + d;
            }
            i += 4;
            return (char) v;
        }
    }
}
