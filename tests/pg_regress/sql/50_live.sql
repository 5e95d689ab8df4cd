-- Live mode: triggers keep segments current as orders arrive; history and the queue.
SET client_min_messages = warning;

-- data anchored at today, so recency at now() means what the generator planted
SELECT count(*) AS customers FROM segment_demo(3000, 11, date_trunc('day', now()), 'shop');
SELECT count(*) >= 2 AS has_segments
FROM segment_users('shop_orders', model => 'shop_live',
                   options => '{"events": "shop_events", "live": "sync", "seed": 3}');
SELECT model, live FROM segment.current_models WHERE model = 'shop_live';
SELECT tgname FROM pg_trigger WHERE tgname LIKE 'shop_live_live_%' ORDER BY 1;

-- ten lapsed customers start buying groceries every other day
CREATE TEMP TABLE comeback AS
SELECT user_id FROM shop_personas WHERE persona = 'lapsed' ORDER BY user_id LIMIT 10;
INSERT INTO shop_orders (user_id, created_at, amount, category)
SELECT c.user_id, date_trunc('day', now()) - g * interval '2 days' + interval '8 hours', 10 + g % 15,
       (ARRAY['grocery', 'beauty'])[1 + g % 2]
FROM comeback c, generate_series(1, 50) g;
INSERT INTO shop_events (user_id, event_time, event_type, category)
SELECT c.user_id, now() - (g % 100) * interval '1 day', CASE WHEN g % 3 = 0 THEN 'cart' ELSE 'view' END, 'grocery'
FROM comeback c, generate_series(1, 30) g;

-- they moved, in the same transaction as their orders, into the frequent buyers' segment
SELECT count(DISTINCT s.segment) AS segments, count(*) AS users
FROM comeback c JOIN segment.shop_live_segments s USING (user_id);
SELECT s.segment = f.segment AS with_the_frequent_buyers
FROM (SELECT DISTINCT segment FROM comeback JOIN segment.shop_live_segments USING (user_id)) s,
     (SELECT segment FROM segment.shop_live_segments
      WHERE user_id = (SELECT min(user_id) FROM shop_personas WHERE persona = 'frequent_small')) f;
SELECT reason, count(*) AS changes, count(DISTINCT user_id) AS users
FROM segment.shop_live_history WHERE reason <> 'fit' GROUP BY 1;

-- async: writes only enqueue; segment_process applies them
SELECT segment_live('shop_live', 'async');
INSERT INTO shop_orders (user_id, created_at, amount, category) VALUES (424242, now(), 25, 'books');
SELECT model, mode, pending FROM segment.live_status;
SELECT segment_process('shop_live') AS processed;
SELECT pending FROM segment.live_status;
SELECT segment_of(424242, 'shop_live') IS NOT NULL AS new_customer_has_a_segment;

SELECT segment_live('shop_live', 'off');
SELECT count(*) AS triggers_left FROM pg_trigger WHERE tgname LIKE 'shop_live_live_%';
