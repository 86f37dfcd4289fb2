//+------------------------------------------------------------------+
//| MT5PipelineEA.mq5 - the native MQL5 side of mt5-pipeline          |
//|                                                                  |
//| NOT COMPILED BY THE PROJECT: MetaEditor does not run on the      |
//| project's CI machines, so this file has never been compiled or   |
//| run by us. Compile it in MetaEditor (F7) and try it on a demo    |
//| account first. What is checked automatically: every route,       |
//| header and JSON field it uses exists in the API's /openapi.json  |
//| with that name and type, and the execution contract's rules are  |
//| read from this text (mt5_pipeline_tests/system/test_mql5_ea.py;  |
//| docs/execution.md): the pip from meta.pip_size, the fallback pip |
//| rule, the transient retcodes, the timeframe filter, the dedupe,  |
//| the ack outbox. None of it has run in a terminal.                |
//|                                                                  |
//| For traders who will not run Python beside the terminal (the     |
//| alternative is `mt5-pipeline bridge`). On the chart it runs on:  |
//|  - POST /ingest each closed bar (on the first start the last     |
//|    InpHistoryBars; after a restart or an API outage, every bar   |
//|    since the last one the API took), in the trade server's time |
//|    with its zone (InpServerTimeZone): the API converts each bar  |
//|    to UTC with the offset in force at it; with the symbol's      |
//|    digits and point so the API knows its pip (gold, indices,     |
//|    crypto need no PIP_SIZES); a bar the API refuses              |
//|    (partial=true) is counted, printed and skipped, never resent |
//|    forever;                                                      |
//|  - every InpPollSeconds, GET /ea/signals; each signal for this   |
//|    chart's symbol AND timeframe is deduped by signal_id across   |
//|    charts and restarts (terminal global variables                |
//|    "mt5p.<signal_id>", claimed under a per-symbol lock taken     |
//|    with GlobalVariableSetOnCondition), refused past expires_at,  |
//|    traded with CTrade (SL/TP = pips x meta.pip_size from the     |
//|    fill price, on the tick grid, as the bridge does), and acked  |
//|    through an outbox file: an ack the API did not take is sent   |
//|    again every timer tick, also after the signal has expired.    |
//|    A transient retcode (no connection, too many requests, ...)   |
//|    is not final: nothing is stored, no ack, the next poll tries  |
//|    again while the signal is pending.                            |
//|  - the execution policy the signal carries (meta.entry_policy,   |
//|    meta.max_hold_bars; docs/trades.md): a signal it skips is     |
//|    acked REJECTED saying why, `reverse` closes the opposite      |
//|    position first, and at each bar close a position held         |
//|    max_hold_bars bars is closed (the time exit);                 |
//|  - each position's open and close, read from the deals history,  |
//|    to POST /ea/trades through a persisted outbox, and at start   |
//|    and every minute POST /ea/reconcile with the magic's          |
//|    positions (nothing is closed for it). Checked from the text   |
//|    like the rest; never run in a terminal either.                |
//|                                                                  |
//| Set-up: Tools -> Options -> Expert Advisors -> "Allow WebRequest |
//| for listed URL", add InpApiUrl; enable Algo Trading; one chart   |
//| per symbol (signals for other symbols are left to their charts). |
//+------------------------------------------------------------------+
#property copyright "mt5-pipeline"
#property version   "1.00"
#property description "Sends closed bars to the mt5-pipeline API, trades its signals (pull mode), acks them."

#include <Trade\Trade.mqh>

input string InpApiUrl      = "http://127.0.0.1:18001"; // API URL (allow it under Tools -> Options -> Expert Advisors)
input string InpApiKey      = "";                       // X-API-Key (one of the API's API_KEYS)
input double InpLots        = 0.01;                     // volume of each order, lots
input long   InpMagic       = 250101;                   // magic number (as BRIDGE_MAGIC)
input int    InpPollSeconds = 2;                        // seconds between GET /ea/signals
input int    InpDeviation   = 10;                       // largest slippage accepted, points
input int    InpHistoryBars = 500;                      // closed bars sent on the first start
input int    InpTimeoutMs   = 5000;                     // timeout of each HTTP request, ms
input string InpEntryPolicy = "one_per_symbol_timeframe"; // entry rule for a signal without meta.entry_policy (as ENTRY_POLICY)
input int    InpMaxHoldBars = 60;                       // time exit for a signal without meta.max_hold_bars (as LABEL_MAX_HOLD_BARS)
// The trade server's time zone, as BRIDGE_SERVER_TIME_ZONE: UTC+2/+3@US (UTC+2 in winter, +3
// in summer, US dates: most FX brokers), an IANA zone (Europe/Athens) or a fixed UTC+3.
// "auto": today's offset for every bar, wrong for history across a daylight-saving change.
input string InpServerTimeZone = "auto";

#define MAX_POST_BARS 5000
// Outcomes kept in the global variable "mt5p.<signal_id>": a ticket (> 0) when filled,
// or one of these. A rejection is stored as OUTCOME_REJECTED - retcode, so retcode 0 is
// -100000, never -0.0 (which reads back as OUTCOME_EXPIRED). An order in flight is
// OUTCOME_SENDING - TimeGMT(): another chart leaves it alone, and only a marker older
// than SENDING_STALE_SECONDS (its chart stopped mid-send) is looked up in the terminal.
#define OUTCOME_EXPIRED        0
#define OUTCOME_INVALID       -1
#define OUTCOME_SKIPPED       -2   // the execution policy did not trade it (acked REJECTED, saying why)
#define OUTCOME_REJECTED      -100000
#define OUTCOME_SENDING       -1000000000
#define SENDING_STALE_SECONDS 60
#define LOCK_STALE_SECONDS    30

CTrade   g_trade;
datetime g_lastSent = 0;   // open time (server clock) of the newest bar the API took
long     g_barsSkipped = 0; // bars the API refused (partial ingest) and the feed moved past

//+------------------------------------------------------------------+
//| JSON: building (flat, ASCII keys) and reading the API's answers   |
//+------------------------------------------------------------------+
string JsonEscape(const string value)
  {
   string out = value;
   StringReplace(out, "\\", "\\\\");
   StringReplace(out, "\"", "\\\"");
   StringReplace(out, "\n", " ");
   StringReplace(out, "\r", " ");
   return out;
  }

string JStr(const string key, const string value) { return "\"" + key + "\":\"" + JsonEscape(value) + "\""; }
string JNum(const string key, const double value, const int digits) { return "\"" + key + "\":" + DoubleToString(value, digits); }
string JInt(const string key, const long value) { return "\"" + key + "\":" + IntegerToString(value); }
string JNull(const string key) { return "\"" + key + "\":null"; }
string JBool(const string key, const bool value) { return "\"" + key + "\":" + (value ? "true" : "false"); }
string JArr(const string key, const string items) { return "\"" + key + "\":[" + items + "]"; }

// Index just after `"key":` at the top level of the object or array text `json`
// (keys of nested objects such as meta are skipped), or -1.
int JsonValueStart(const string json, const string key)
  {
   string quoted = "\"" + key + "\"";
   int depth = 0;
   bool inString = false;
   int n = StringLen(json);
   for(int i = 0; i < n; i++)
     {
      ushort c = StringGetCharacter(json, i);
      if(inString)
        {
         if(c == '\\') { i++; continue; }
         if(c == '"') inString = false;
         continue;
        }
      if(c == '{' || c == '[') { depth++; continue; }
      if(c == '}' || c == ']') { depth--; continue; }
      if(c != '"') continue;
      if(depth == 1 && StringSubstr(json, i, StringLen(quoted)) == quoted)
        {
         int j = i + StringLen(quoted);
         while(j < n && StringGetCharacter(json, j) == ' ') j++;
         if(j < n && StringGetCharacter(json, j) == ':')
           {
            j++;
            while(j < n && StringGetCharacter(json, j) == ' ') j++;
            return j;
           }
        }
      inString = true;
     }
   return -1;
  }

string JsonString(const string json, const string key)
  {
   int i = JsonValueStart(json, key);
   if(i < 0 || StringGetCharacter(json, i) != '"') return "";
   string out = "";
   int n = StringLen(json);
   for(int j = i + 1; j < n; j++)
     {
      ushort c = StringGetCharacter(json, j);
      if(c == '\\' && j + 1 < n) { j++; out += ShortToString(StringGetCharacter(json, j)); continue; }
      if(c == '"') break;
      out += ShortToString(c);
     }
   return out;
  }

double JsonNumber(const string json, const string key)
  {
   int i = JsonValueStart(json, key);
   if(i < 0) return 0.0;
   int j = i;
   int n = StringLen(json);
   while(j < n && StringFind("+-.0123456789eE", ShortToString(StringGetCharacter(json, j))) >= 0) j++;
   return StringToDouble(StringSubstr(json, i, j - i));
  }

// The object under `key` as its own JSON text ("" if there is none).
string JsonObject(const string json, const string key)
  {
   int i = JsonValueStart(json, key);
   if(i < 0 || StringGetCharacter(json, i) != '{') return "";
   int n = StringLen(json);
   int depth = 0;
   bool inString = false;
   for(int j = i; j < n; j++)
     {
      ushort c = StringGetCharacter(json, j);
      if(inString)
        {
         if(c == '\\') { j++; continue; }
         if(c == '"') inString = false;
         continue;
        }
      if(c == '"') { inString = true; continue; }
      if(c == '{') depth++;
      if(c == '}') { depth--; if(depth == 0) return StringSubstr(json, i, j - i + 1); }
     }
   return "";
  }

// The objects of the array under `key`, each as its own JSON text.
int JsonArray(const string json, const string key, string &items[])
  {
   ArrayResize(items, 0);
   int i = JsonValueStart(json, key);
   if(i < 0 || StringGetCharacter(json, i) != '[') return 0;
   int n = StringLen(json);
   int depth = 0, start = -1;
   bool inString = false;
   for(int j = i + 1; j < n; j++)
     {
      ushort c = StringGetCharacter(json, j);
      if(inString)
        {
         if(c == '\\') { j++; continue; }
         if(c == '"') inString = false;
         continue;
        }
      if(c == '"') { inString = true; continue; }
      if(c == '{') { if(depth == 0) start = j; depth++; continue; }
      if(c == '}')
        {
         depth--;
         if(depth == 0 && start >= 0)
           {
            int k = ArraySize(items);
            ArrayResize(items, k + 1);
            items[k] = StringSubstr(json, start, j - start + 1);
            start = -1;
           }
         continue;
        }
      if(c == ']' && depth == 0) break;
     }
   return ArraySize(items);
  }

//+------------------------------------------------------------------+
//| HTTP                                                              |
//+------------------------------------------------------------------+
int ApiRequest(const string method, const string path, const string body, string &response)
  {
   string headers = "Content-Type: application/json\r\nX-API-Key: " + InpApiKey + "\r\n";
   char data[];
   char result[];
   string resultHeaders;
   if(body != "")
     {
      int n = StringToCharArray(body, data, 0, WHOLE_ARRAY, CP_UTF8);
      ArrayResize(data, n - 1); // without the terminating zero
     }
   ResetLastError();
   int status = WebRequest(method, InpApiUrl + path, headers, InpTimeoutMs, data, result, resultHeaders);
   if(status == -1)
     {
      int err = GetLastError();
      if(err == 4014)
         PrintFormat("WebRequest to %s is not allowed: add it under Tools -> Options -> Expert Advisors", InpApiUrl);
      else
         PrintFormat("%s %s failed: error %d", method, path, err);
     }
   response = CharArrayToString(result, 0, WHOLE_ARRAY, CP_UTF8);
   return status;
  }

//+------------------------------------------------------------------+
//| Time: MT5 bar times are the trade server's clock; the API is UTC  |
//+------------------------------------------------------------------+
long ServerOffsetSeconds()
  {
   return (long)MathRound((double)(TimeTradeServer() - TimeGMT()) / 1800.0) * 1800;
  }

// "2025-10-25T10:31:00Z" (or with a fraction) -> datetime (UTC); 0 if unreadable.
datetime IsoToTime(const string iso)
  {
   if(StringLen(iso) < 19) return 0;
   string s = StringSubstr(iso, 0, 19);
   StringReplace(s, "-", ".");
   StringReplace(s, "T", " ");
   return StringToTime(s);
  }

string TimeframeName()
  {
   switch(_Period)
     {
      case PERIOD_M1:  return "M1";
      case PERIOD_M5:  return "M5";
      case PERIOD_M15: return "M15";
      case PERIOD_M30: return "M30";
      case PERIOD_H1:  return "H1";
      case PERIOD_H4:  return "H4";
      case PERIOD_D1:  return "D1";
      case PERIOD_W1:  return "W1";
      case PERIOD_MN1: return "MN1";
     }
   return "";
  }

//+------------------------------------------------------------------+
//| Bars in                                                           |
//+------------------------------------------------------------------+
// The bar's time as the server's clock has it: the API converts it with the zone's rules.
string CandleJson(const MqlRates &r)
  {
   return "{" + JInt("time", (long)r.time) + "," + JNum("open", r.open, _Digits) + "," + JNum("high", r.high, _Digits) + ","
          + JNum("low", r.low, _Digits) + "," + JNum("close", r.close, _Digits) + "," + JInt("tick_volume", r.tick_volume) + ","
          + JInt("spread", r.spread) + "," + JInt("real_volume", r.real_volume) + "}";
  }

// "auto": today's offset as a fixed zone ("UTC+3", "UTC-3:30"); the API records the offset
// each bar was stored with and refuses one re-sent with another, so a catch-up across a
// change cannot overwrite a correct bar, but only the zone stores both sides right.
string ServerTimeZone()
  {
   if(InpServerTimeZone != "auto" && InpServerTimeZone != "")
      return InpServerTimeZone;
   long offset = ServerOffsetSeconds();
   if(offset == 0) return "UTC";
   long minutes = (offset < 0 ? -offset : offset) / 60;
   string zone = "UTC" + (offset < 0 ? "-" : "+") + IntegerToString(minutes / 60);
   if(minutes % 60 != 0) zone += ":" + IntegerToString(minutes % 60, 2, '0');
   return zone;
  }

string IngestBody(const string candles)
  {
   return "{" + JStr("symbol", _Symbol) + "," + JStr("timeframe", TimeframeName()) + "," + JArr("candles", candles) + ","
          + JStr("server_time_zone", ServerTimeZone()) + "," + JBool("partial", true) + "," + JInt("digits", _Digits) + "," + JNum("point", _Point, _Digits) + "}";
  }

string LastBarKey() { return "mt5p.bars." + _Symbol + "." + TimeframeName(); }

// Every closed bar the API has not taken yet, oldest first; the last one taken is sent
// again (a late tick may have changed it; ingest is idempotent).
void SendClosedBars()
  {
   datetime forming = iTime(_Symbol, _Period, 0);
   if(forming == 0) return;
   // Bar 0 is closed too once its time is up, before the next bar's first tick (not MN1:
   // PeriodSeconds says 30 days, a month is 28 to 31; it waits for the next month's bar).
   bool upToTime = (_Period != PERIOD_MN1 && forming + PeriodSeconds(_Period) <= TimeTradeServer());
   datetime newestClosed = upToTime ? forming : forming - 1;
   MqlRates rates[];
   int n;
   if(g_lastSent == 0)
      n = CopyRates(_Symbol, _Period, (newestClosed == forming) ? 0 : 1, InpHistoryBars, rates);
   else
      n = CopyRates(_Symbol, _Period, g_lastSent, newestClosed, rates);
   if(n <= 0 || rates[n - 1].time <= g_lastSent) return;
   int count = MathMin(n, MAX_POST_BARS);
   string items = "";
   for(int i = 0; i < count; i++)
      items += (i > 0 ? "," : "") + CandleJson(rates[i]);
   string response;
   int status = ApiRequest("POST", "/ingest", IngestBody(items), response);
   if(status == 200)
     {
      // partial=true: the good bars are stored, the refused ones listed; move on past them.
      long rejected = (long)JsonNumber(response, "rejected");
      if(rejected > 0)
        {
         g_barsSkipped += rejected;
         PrintFormat("POST /ingest: %d bar(s) refused and skipped (%d in all): %s", rejected, g_barsSkipped, StringSubstr(response, 0, 400));
        }
      g_lastSent = rates[count - 1].time;
      GlobalVariableSet(LastBarKey(), (double)g_lastSent);
     }
   else
      PrintFormat("POST /ingest: HTTP %d %s (will resend)", status, StringSubstr(response, 0, 300));
  }

//+------------------------------------------------------------------+
//| Orders: the execution contract (docs/execution.md), as the bridge |
//+------------------------------------------------------------------+
// The pip of a signal that carries no meta.pip_size: the core's rule on this terminal's
// digits and point (mt5_pipeline/market/pips.py pip_from_instrument): 10 points on 3- and
// 5-digit quotes, one point otherwise, for every instrument.
double LocalPipSize(const int digits, const double point)
  {
   if(digits == 3 || digits == 5) return point * 10;
   return point;
  }

// The signal's own pip (meta.pip_size: what the labels, backtest and promotion used).
double SignalPipSize(const string meta)
  {
   return JsonNumber(meta, "pip_size");
  }

// `value` as a whole number of ticks (SYMBOL_TRADE_TICK_SIZE): mode 0 nearest, -1 down, 1 up.
double ToTick(const double value, const double tick, const int digits, const int mode)
  {
   if(tick <= 0) return NormalizeDouble(value, digits);
   double ticks = value / tick;
   double whole = (mode < 0) ? MathFloor(ticks + 1e-9) : (mode > 0) ? MathCeil(ticks - 1e-9) : MathRound(ticks);
   return NormalizeDouble(whole * tick, digits);
  }

// SL/TP from pips, on the tick grid, at least the stops level from the price the position closes at.
void Stops(const string symbol, const bool buy, const double price, const MqlTick &tick, const double slPips, const double tpPips, const double pip,
           double &sl, double &tp)
  {
   int digits = (int)SymbolInfoInteger(symbol, SYMBOL_DIGITS);
   double point = SymbolInfoDouble(symbol, SYMBOL_POINT);
   double tickSize = SymbolInfoDouble(symbol, SYMBOL_TRADE_TICK_SIZE);
   double sign = buy ? 1.0 : -1.0;
   sl = ToTick(price - sign * slPips * pip, tickSize, digits, 0);
   tp = ToTick(price + sign * tpPips * pip, tickSize, digits, 0);
   long level = SymbolInfoInteger(symbol, SYMBOL_TRADE_STOPS_LEVEL);
   if(level <= 0) return;
   double gap = level * point;
   if(buy)
     {
      sl = MathMin(sl, ToTick(tick.bid - gap, tickSize, digits, -1));
      tp = MathMax(tp, ToTick(tick.bid + gap, tickSize, digits, 1));
     }
   else
     {
      sl = MathMax(sl, ToTick(tick.ask + gap, tickSize, digits, 1));
      tp = MathMin(tp, ToTick(tick.ask - gap, tickSize, digits, -1));
     }
  }

// InpLots rounded down to SYMBOL_VOLUME_STEP, at most SYMBOL_VOLUME_MAX; 0 when below SYMBOL_VOLUME_MIN.
double Volume(const string symbol)
  {
   double step = SymbolInfoDouble(symbol, SYMBOL_VOLUME_STEP);
   double vmin = SymbolInfoDouble(symbol, SYMBOL_VOLUME_MIN);
   double vmax = SymbolInfoDouble(symbol, SYMBOL_VOLUME_MAX);
   double v = (step > 0) ? MathFloor(InpLots / step + 1e-9) * step : InpLots;
   int volumeDigits = (step > 0) ? (int)MathMax(0, MathCeil(-MathLog10(step) - 1e-9)) : 2;
   v = NormalizeDouble(v, volumeDigits);
   if(vmax > 0) v = MathMin(v, vmax);
   if(v < vmin || v <= 0) return 0;
   return v;
  }

// Retcodes that say "not now" (mt5_pipeline/execution/contract.py TRANSIENT_RETCODES): not final.
bool IsTransient(const uint retcode)
  {
   switch(retcode)
     {
      case 10004: // requote (after the one immediate retry)
      case 10012: // request canceled by timeout
      case 10020: // prices changed (after the one immediate retry)
      case 10021: // no quotes
      case 10024: // too frequent requests
      case 10028: // request locked for processing
      case 10031: // no connection with the trade server
         return true;
     }
   return false;
  }

// After an interrupted send: the order with this comment and magic, if it exists.
ulong FindPlaced(const string symbol, const string comment)
  {
   for(int i = PositionsTotal() - 1; i >= 0; i--)
     {
      ulong ticket = PositionGetTicket(i);
      if(ticket > 0 && PositionGetString(POSITION_SYMBOL) == symbol && PositionGetString(POSITION_COMMENT) == comment
         && PositionGetInteger(POSITION_MAGIC) == InpMagic)
         return ticket;
     }
   if(HistorySelect(TimeCurrent() - 7 * 86400, TimeCurrent() + 86400))
      for(int i = HistoryOrdersTotal() - 1; i >= 0; i--)
        {
         ulong ticket = HistoryOrderGetTicket(i);
         if(ticket > 0 && HistoryOrderGetString(ticket, ORDER_SYMBOL) == symbol && HistoryOrderGetString(ticket, ORDER_COMMENT) == comment
            && HistoryOrderGetInteger(ticket, ORDER_MAGIC) == InpMagic)
            return ticket;
        }
   return 0;
  }

//+------------------------------------------------------------------+
//| Positions: the execution policy, trade reports, reconciliation   |
//| (docs/trades.md). The rule is the core's (execution_policy.py);   |
//| the signal carries it in meta.entry_policy / meta.max_hold_bars,  |
//| so the EA obeys it without deciding it. Per position the EA keeps |
//| terminal global variables: "mt5p.pos.<ticket>.tf" (the chart      |
//| period it belongs to), ".entry" (the open time, server clock, of  |
//| its entry bar: the signal's bar + one), ".hold" (max_hold_bars),  |
//| ".why" (why the EA closed it) and ".rep" (what the API took).     |
//+------------------------------------------------------------------+
#define WHY_TIME     1
#define WHY_OPPOSITE 2
#define REP_OPEN     1
#define REP_CLOSED   2
#define RECONCILE_SECONDS 60

datetime g_lastReconcile = 0;
int      g_reconcileUnknown = 0;
int      g_reconcileMissing = 0;

string PosKey(const ulong ticket, const string what) { return "mt5p.pos." + IntegerToString((long)ticket) + "." + what; }

// The server's clock to UTC for deal and position times: the one place the EA converts them.
// Today's offset (MQL5 has no zone rules; the API converts the bars with InpServerTimeZone):
// right for what happened since the last daylight-saving change, an hour off before it.
long ServerToUtc(const datetime serverTime) { return (long)serverTime - ServerOffsetSeconds(); }

// The policy a signal carries (what the backtest simulated); the inputs only for a signal without it.
void SignalPolicy(const string meta, string &entryPolicy, int &maxHoldBars)
  {
   entryPolicy = JsonString(meta, "entry_policy");
   if(entryPolicy != "one_per_symbol_timeframe" && entryPolicy != "stack" && entryPolicy != "reverse") entryPolicy = InpEntryPolicy;
   maxHoldBars = (int)JsonNumber(meta, "max_hold_bars");
   if(maxHoldBars < 1) maxHoldBars = InpMaxHoldBars;
  }

// This chart's open positions (its symbol and timeframe, opened by this EA), with their sides.
int MyPositions(ulong &tickets[], bool &longs[])
  {
   ArrayResize(tickets, 0);
   ArrayResize(longs, 0);
   for(int i = PositionsTotal() - 1; i >= 0; i--)
     {
      ulong ticket = PositionGetTicket(i);
      if(ticket == 0 || PositionGetInteger(POSITION_MAGIC) != InpMagic || PositionGetString(POSITION_SYMBOL) != _Symbol) continue;
      if(!GlobalVariableCheck(PosKey(ticket, "tf")) || (int)GlobalVariableGet(PosKey(ticket, "tf")) != (int)_Period) continue;
      int k = ArraySize(tickets);
      ArrayResize(tickets, k + 1);
      ArrayResize(longs, k + 1);
      tickets[k] = ticket;
      longs[k] = (PositionGetInteger(POSITION_TYPE) == POSITION_TYPE_BUY);
     }
   return ArraySize(tickets);
  }



// The whole signal_id of an order this EA placed ("mt5p.<signal_id>" holds its ticket); "" if none.
string SignalOfTicket(const ulong ticket)
  {
   for(int i = GlobalVariablesTotal() - 1; i >= 0; i--)
     {
      string name = GlobalVariableName(i);
      if(StringLen(name) == 41 && StringSubstr(name, 0, 5) == "mt5p." && (ulong)GlobalVariableGet(name) == ticket)
         return StringSubstr(name, 5);
     }
   return "";
  }

string ExitReason(const long dealReason, const ulong ticket)
  {
   if(dealReason == DEAL_REASON_SL) return "sl";
   if(dealReason == DEAL_REASON_TP) return "tp";
   if(dealReason == DEAL_REASON_EXPERT && GlobalVariableCheck(PosKey(ticket, "why")))
      return ((int)GlobalVariableGet(PosKey(ticket, "why")) == WHY_TIME) ? "time" : "opposite_signal";
   return "manual"; // a person, the mobile or web terminal, a stop-out, another EA
  }

string TimeframeOfTicket(const ulong ticket)
  {
   if(!GlobalVariableCheck(PosKey(ticket, "tf"))) return "";
   switch((int)GlobalVariableGet(PosKey(ticket, "tf")))
     {
      case PERIOD_M1:  return "M1";
      case PERIOD_M5:  return "M5";
      case PERIOD_M15: return "M15";
      case PERIOD_M30: return "M30";
      case PERIOD_H1:  return "H1";
      case PERIOD_H4:  return "H4";
      case PERIOD_D1:  return "D1";
      case PERIOD_W1:  return "W1";
      case PERIOD_MN1: return "MN1";
     }
   return "";
  }

// One position from its deals (HistorySelectByPosition): the open (IN deal) and, once
// the position is gone, the close (OUT deals). "" when it is not this magic's. `closed`
// says which of the two the report is.
string TradeJson(const ulong ticket, bool &closed)
  {
   closed = false;
   if(!HistorySelectByPosition(ticket)) return "";
   int n = HistoryDealsTotal();
   ulong inDeal = 0, lastOut = 0;
   double volumeIn = 0, volumeOut = 0, priceOut = 0, profit = 0, swap = 0, commission = 0;
   for(int i = 0; i < n; i++)
     {
      ulong deal = HistoryDealGetTicket(i);
      if(deal == 0) continue;
      long entry = HistoryDealGetInteger(deal, DEAL_ENTRY);
      swap += HistoryDealGetDouble(deal, DEAL_SWAP);
      commission += HistoryDealGetDouble(deal, DEAL_COMMISSION);
      if(entry == DEAL_ENTRY_IN)
        {
         if(inDeal == 0) inDeal = deal;
         volumeIn += HistoryDealGetDouble(deal, DEAL_VOLUME);
        }
      else if(entry == DEAL_ENTRY_OUT || entry == DEAL_ENTRY_OUT_BY)
        {
         double v = HistoryDealGetDouble(deal, DEAL_VOLUME);
         volumeOut += v;
         priceOut += HistoryDealGetDouble(deal, DEAL_PRICE) * v;
         profit += HistoryDealGetDouble(deal, DEAL_PROFIT);
         lastOut = deal;
        }
     }
   if(inDeal == 0 || HistoryDealGetInteger(inDeal, DEAL_MAGIC) != InpMagic) return "";
   string symbol = HistoryDealGetString(inDeal, DEAL_SYMBOL);
   int digits = (int)SymbolInfoInteger(symbol, SYMBOL_DIGITS);
   string signalId = SignalOfTicket(ticket);
   string tf = TimeframeOfTicket(ticket);
   double sl = 0, tp = 0;
   bool isOpen = PositionSelectByTicket(ticket);
   if(isOpen) { sl = PositionGetDouble(POSITION_SL); tp = PositionGetDouble(POSITION_TP); }
   string json = "{" + JInt("ticket", (long)ticket) + "," + (signalId != "" ? JStr("signal_id", signalId) : JNull("signal_id")) + ","
                 + JStr("symbol", symbol) + "," + (tf != "" ? JStr("timeframe", tf) : JNull("timeframe")) + ","
                 + JStr("side", HistoryDealGetInteger(inDeal, DEAL_TYPE) == DEAL_TYPE_BUY ? "BUY" : "SELL") + ","
                 + JNum("volume", volumeIn, 2) + "," + JInt("open_time", ServerToUtc((datetime)HistoryDealGetInteger(inDeal, DEAL_TIME))) + ","
                 + JNum("open_price", HistoryDealGetDouble(inDeal, DEAL_PRICE), digits) + "," + JNum("swap", swap, 2) + ","
                 + JNum("commission", commission, 2) + "," + JInt("magic", InpMagic) + "," + JInt("account", AccountInfoInteger(ACCOUNT_LOGIN));
   if(isOpen) json += "," + JNum("sl", sl, digits) + "," + JNum("tp", tp, digits);
   if(!isOpen && lastOut != 0 && volumeOut + 1e-9 >= volumeIn)
     {
      closed = true;
      json += "," + JInt("close_time", ServerToUtc((datetime)HistoryDealGetInteger(lastOut, DEAL_TIME))) + ","
              + JNum("close_price", priceOut / volumeOut, digits) + "," + JStr("exit_reason", ExitReason(HistoryDealGetInteger(lastOut, DEAL_REASON), ticket)) + ","
              + JNum("profit", profit, 2);
     }
   return json + "}";
  }

string TradesBody(const string items) { return "{" + JArr("trades", items) + "}"; }

// The trade reports outbox: one POST /ea/trades body per line, kept until the API takes
// it, like the ack outbox. One file per chart.
string TradesOutboxFile() { return "mt5p_trades_" + _Symbol + "_" + TimeframeName() + ".txt"; }

void QueueTrade(const ulong ticket)
  {
   bool closed;
   string item = TradeJson(ticket, closed);
   if(item == "") return;
   int state = closed ? REP_CLOSED : REP_OPEN;
   int said = GlobalVariableCheck(PosKey(ticket, "rep")) ? (int)GlobalVariableGet(PosKey(ticket, "rep")) : 0;
   if(said >= state) return; // the API has it (each state once; the API is idempotent anyway)
   int h = FileOpen(TradesOutboxFile(), FILE_READ | FILE_WRITE | FILE_TXT | FILE_ANSI);
   if(h == INVALID_HANDLE) { PrintFormat("trades outbox %s: cannot open (error %d)", TradesOutboxFile(), GetLastError()); return; }
   FileSeek(h, 0, SEEK_END);
   FileWriteString(h, IntegerToString((long)ticket) + " " + IntegerToString(state) + " " + TradesBody(item) + "\n");
   FileFlush(h);
   FileClose(h);
  }

void FlushTrades()
  {
   if(!FileIsExist(TradesOutboxFile())) return;
   int h = FileOpen(TradesOutboxFile(), FILE_READ | FILE_TXT | FILE_ANSI);
   if(h == INVALID_HANDLE) return;
   string keep[];
   while(!FileIsEnding(h))
     {
      string line = FileReadString(h);
      if(line == "") continue;
      string parts[];
      if(StringSplit(line, ' ', parts) < 3) continue;
      ulong ticket = (ulong)StringToInteger(parts[0]);
      int state = (int)StringToInteger(parts[1]);
      string trades = StringSubstr(line, StringLen(parts[0]) + StringLen(parts[1]) + 2);
      string response;
      int code = ApiRequest("POST", "/ea/trades", trades, response);
      if(code == 200 || code == 404 || code == 422)
        {
         if(code != 200) PrintFormat("trade report for %I64u dropped, the API refused it: HTTP %d %s", ticket, code, StringSubstr(response, 0, 300));
         if(!GlobalVariableCheck(PosKey(ticket, "rep")) || (int)GlobalVariableGet(PosKey(ticket, "rep")) < state)
            GlobalVariableSet(PosKey(ticket, "rep"), state);
         continue;
        }
      int k = ArraySize(keep);
      ArrayResize(keep, k + 1);
      keep[k] = line;
     }
   FileClose(h);
   GlobalVariablesFlush();
   if(ArraySize(keep) == 0) { FileDelete(TradesOutboxFile()); return; }
   h = FileOpen(TradesOutboxFile(), FILE_WRITE | FILE_TXT | FILE_ANSI);
   if(h == INVALID_HANDLE) return;
   for(int i = 0; i < ArraySize(keep); i++) FileWriteString(h, keep[i] + "\n");
   FileClose(h);
  }

// Every position of the magic the deals history touched since the last look (a trade
// closed while the EA was off is in the history when it comes back), then the outbox.
void ReportTrades()
  {
   string cursorKey = "mt5p.deals." + _Symbol + "." + TimeframeName();
   datetime since = GlobalVariableCheck(cursorKey) ? (datetime)GlobalVariableGet(cursorKey) - 300 : TimeTradeServer() - 30 * 86400;
   if(HistorySelect(since, TimeTradeServer() + 86400))
     {
      int n = HistoryDealsTotal();
      ulong positions[];
      datetime newest = 0;
      for(int i = 0; i < n; i++)
        {
         ulong deal = HistoryDealGetTicket(i);
         if(deal == 0) continue;
         datetime at = (datetime)HistoryDealGetInteger(deal, DEAL_TIME);
         if(at > newest) newest = at;
         ulong position = (ulong)HistoryDealGetInteger(deal, DEAL_POSITION_ID);
         if(position == 0) continue;
         int k = ArraySize(positions);
         ArrayResize(positions, k + 1);
         positions[k] = position;
        }
      // TradeJson selects each position's own history: read the list first.
      for(int i = 0; i < ArraySize(positions); i++) QueueTrade(positions[i]);
      if(newest > 0) GlobalVariableSet(cursorKey, (double)newest);
     }
   FlushTrades();
  }

bool ClosePosition(const ulong ticket, const int why)
  {
   GlobalVariableSet(PosKey(ticket, "why"), why); // before the close: the report says why even after a crash
   GlobalVariablesFlush();
   if(!PositionSelectByTicket(ticket)) return true; // already gone: its deals say how
   if(g_trade.PositionClose(ticket, (ulong)InpDeviation)) return true;
   uint retcode = g_trade.ResultRetcode();
   PrintFormat("ticket %I64u not closed (%s): retcode %u %s", ticket, why == WHY_TIME ? "time" : "opposite_signal", retcode, g_trade.ResultRetcodeDescription());
   return retcode == 10036; // TRADE_RETCODE_POSITION_CLOSED: someone was first
  }

// The entry rule (execution_policy.decide_entry): 1 open, 0 skip (why says it), -1 not now.
int PolicyEntry(const string entryPolicy, const bool buy, string &why)
  {
   ulong tickets[];
   bool longs[];
   int n = MyPositions(tickets, longs);
   if(entryPolicy == "stack" || n == 0) return 1;
   string tf = TimeframeName();
   if(entryPolicy == "one_per_symbol_timeframe")
     {
      why = StringFormat("skipped by the execution policy (one_per_symbol_timeframe): a %s %s position is open (ticket %I64u)", _Symbol, tf, tickets[0]);
      return 0;
     }
   // reverse: a same-side signal keeps the open position; an opposite one closes it first.
   bool opposite = false;
   for(int i = 0; i < n; i++) if(longs[i] != buy) opposite = true;
   if(!opposite)
     {
      why = StringFormat("skipped by the execution policy (reverse): a %s %s %s position is already open (ticket %I64u)", buy ? "BUY" : "SELL", _Symbol, tf, tickets[0]);
      return 0;
     }
   for(int i = 0; i < n; i++)
      if(longs[i] != buy && !ClosePosition(tickets[i], WHY_OPPOSITE)) return -1;
   ReportTrades();
   return 1;
  }

void RememberPosition(const ulong ticket, const string signalTime, const int maxHoldBars)
  {
   datetime entryBar = (datetime)(IsoToTime(signalTime) + ServerOffsetSeconds() + PeriodSeconds(_Period));
   GlobalVariableSet(PosKey(ticket, "tf"), (double)_Period);
   GlobalVariableSet(PosKey(ticket, "entry"), (double)entryBar);
   GlobalVariableSet(PosKey(ticket, "hold"), (double)maxHoldBars);
   GlobalVariablesFlush();
  }

// The time exit (execution_policy.due_exits), at each bar close: a position closes once
// max_hold_bars bars, counted from its entry bar through the last closed bar, have closed.
// Bars are counted as the terminal has them (Bars()), as the backtest counts rows, so a
// weekend does not end a trade early.
void TimeExits()
  {
   datetime forming = iTime(_Symbol, _Period, 0);
   if(forming == 0) return;
   datetime newestClosed = (forming + PeriodSeconds(_Period) <= TimeTradeServer()) ? forming : iTime(_Symbol, _Period, 1);
   ulong tickets[];
   bool longs[];
   int n = MyPositions(tickets, longs);
   bool closed = false;
   for(int i = 0; i < n; i++)
     {
      datetime entryBar = (datetime)GlobalVariableGet(PosKey(tickets[i], "entry"));
      int hold = (int)GlobalVariableGet(PosKey(tickets[i], "hold"));
      if(entryBar == 0 || hold < 1 || newestClosed < entryBar) continue;
      int held = Bars(_Symbol, _Period, entryBar, newestClosed);
      if(held >= hold && ClosePosition(tickets[i], WHY_TIME)) closed = true;
     }
   if(closed) ReportTrades();
  }

//+------------------------------------------------------------------+
//| Reconciliation: the terminal's positions of the magic against the |
//| API's open trades, at start and every minute. The API records the |
//| unknown ones; the closes of the missing ones are read from the    |
//| deals history and reported. Nothing is closed.                    |
//+------------------------------------------------------------------+
string PositionJson(const ulong ticket)
  {
   string symbol = PositionGetString(POSITION_SYMBOL);
   int digits = (int)SymbolInfoInteger(symbol, SYMBOL_DIGITS);
   string signalId = SignalOfTicket(ticket);
   string tf = TimeframeOfTicket(ticket);
   return "{" + JInt("ticket", (long)ticket) + "," + (signalId != "" ? JStr("signal_id", signalId) : JNull("signal_id")) + "," + JStr("symbol", symbol) + ","
          + (tf != "" ? JStr("timeframe", tf) : JNull("timeframe")) + "," + JStr("side", PositionGetInteger(POSITION_TYPE) == POSITION_TYPE_BUY ? "BUY" : "SELL") + ","
          + JNum("volume", PositionGetDouble(POSITION_VOLUME), 2) + "," + JInt("open_time", ServerToUtc((datetime)PositionGetInteger(POSITION_TIME))) + ","
          + JNum("open_price", PositionGetDouble(POSITION_PRICE_OPEN), digits) + "," + JNum("sl", PositionGetDouble(POSITION_SL), digits) + ","
          + JNum("tp", PositionGetDouble(POSITION_TP), digits) + "," + JNum("swap", PositionGetDouble(POSITION_SWAP), 2) + "}";
  }

string ReconcileBody(const string positions)
  {
   return "{" + JInt("magic", InpMagic) + "," + JInt("account", AccountInfoInteger(ACCOUNT_LOGIN)) + "," + JArr("positions", positions) + "}";
  }

// The whole numbers of the array under `key` (the API's ticket lists).
int JsonTickets(const string json, const string key, ulong &out[])
  {
   ArrayResize(out, 0);
   int i = JsonValueStart(json, key);
   if(i < 0 || StringGetCharacter(json, i) != '[') return 0;
   int end = StringFind(json, "]", i);
   if(end < 0) return 0;
   string parts[];
   int n = StringSplit(StringSubstr(json, i + 1, end - i - 1), ',', parts);
   for(int k = 0; k < n; k++)
     {
      StringTrimLeft(parts[k]);
      StringTrimRight(parts[k]);
      if(parts[k] == "") continue;
      int m = ArraySize(out);
      ArrayResize(out, m + 1);
      out[m] = (ulong)StringToInteger(parts[k]);
     }
   return ArraySize(out);
  }

void Reconcile()
  {
   g_lastReconcile = TimeGMT();
   ReportTrades(); // what the history says first, so a fresh close is not a difference
   string items = "";
   for(int i = PositionsTotal() - 1; i >= 0; i--)
     {
      ulong ticket = PositionGetTicket(i);
      if(ticket == 0 || PositionGetInteger(POSITION_MAGIC) != InpMagic) continue;
      items += (items == "" ? "" : ",") + PositionJson(ticket);
     }
   string response;
   int status = ApiRequest("POST", "/ea/reconcile", ReconcileBody(items), response);
   if(status != 200)
     {
      PrintFormat("POST /ea/reconcile: HTTP %d %s (tried again in a minute)", status, StringSubstr(response, 0, 300));
      return;
     }
   ulong unknown[], missing[];
   g_reconcileUnknown = JsonTickets(response, "unknown", unknown);
   g_reconcileMissing = JsonTickets(response, "missing", missing);
   if(g_reconcileUnknown > 0)
      PrintFormat("reconciliation: %d position(s) of magic %I64d were not open in the API: recorded now, left open", g_reconcileUnknown, InpMagic);
   if(g_reconcileMissing > 0)
     {
      PrintFormat("reconciliation: %d trade(s) open in the API are gone from the terminal: reporting their close from the deals history", g_reconcileMissing);
      for(int k = 0; k < g_reconcileMissing; k++) QueueTrade(missing[k]);
      FlushTrades();
     }
  }

//+------------------------------------------------------------------+
//| Signals in, acks out                                              |
//+------------------------------------------------------------------+
string AckBody(const string signalId, const ulong ticket, const string status, const string message, const long retcode)
  {
   string ticketField = (ticket > 0) ? JInt("ticket", (long)ticket) : JNull("ticket");
   string retcodeField = (retcode >= 0) ? JInt("retcode", retcode) : JNull("retcode");
   return "{" + JStr("signal_id", signalId) + "," + ticketField + "," + JStr("status", status) + "," + JStr("message", message) + ","
          + retcodeField + "}";
  }

// The ack outbox: one JSON body per line in MQL5/Files, kept until the API takes it, so
// an ack lost to an API outage is sent again even after the signal left PENDING
// (expired) on the API. One file per chart: charts never write each other's.
string OutboxFile() { return "mt5p_acks_" + _Symbol + "_" + TimeframeName() + ".txt"; }

bool OutboxAppend(const string body)
  {
   int h = FileOpen(OutboxFile(), FILE_READ | FILE_WRITE | FILE_TXT | FILE_ANSI);
   if(h == INVALID_HANDLE)
     {
      PrintFormat("ack outbox %s: cannot open (error %d)", OutboxFile(), GetLastError());
      return false;
     }
   FileSeek(h, 0, SEEK_END);
   FileWriteString(h, body + "\n");
   FileFlush(h);
   FileClose(h);
   return true;
  }

// Send every ack in the outbox; keep the ones the API did not take (network, 5xx, 429).
// 404 (never queued there) and 422 cannot succeed by repeating: logged and dropped.
void FlushOutbox()
  {
   if(!FileIsExist(OutboxFile())) return;
   int h = FileOpen(OutboxFile(), FILE_READ | FILE_TXT | FILE_ANSI);
   if(h == INVALID_HANDLE) return;
   string keep[];
   while(!FileIsEnding(h))
     {
      string body = FileReadString(h);
      if(body == "") continue;
      string response;
      int code = ApiRequest("POST", "/ea/ack", body, response);
      if(code == 200) continue;
      if(code == 404 || code == 422)
        {
         PrintFormat("ack dropped, the API refused it: HTTP %d %s", code, StringSubstr(response, 0, 300));
         continue;
        }
      int k = ArraySize(keep);
      ArrayResize(keep, k + 1);
      keep[k] = body;
     }
   FileClose(h);
   if(ArraySize(keep) == 0) { FileDelete(OutboxFile()); return; }
   h = FileOpen(OutboxFile(), FILE_WRITE | FILE_TXT | FILE_ANSI);
   if(h == INVALID_HANDLE) return;
   for(int i = 0; i < ArraySize(keep); i++) FileWriteString(h, keep[i] + "\n");
   FileClose(h);
  }

void SendAck(const string signalId, const ulong ticket, const string status, const string message, const long retcode)
  {
   OutboxAppend(AckBody(signalId, ticket, status, message, retcode));
   FlushOutbox();
  }

void Remember(const string key, const double outcome)
  {
   GlobalVariableSet(key, outcome);
   GlobalVariablesFlush(); // on disk before anything else happens: this is the dedupe
  }

// A per-symbol lock across charts: "take" is atomic (GlobalVariableSetOnCondition sets
// the holder only while the lock reads 0), so check-then-claim of a signal_id is too.
string LockKey(const string symbol) { return "mt5p.lock." + symbol; }
string LockTimeKey(const string symbol) { return "mt5p.lock." + symbol + ".t"; }

bool TakeLock(const string symbol)
  {
   string lock = LockKey(symbol);
   if(!GlobalVariableCheck(lock)) GlobalVariableTemp(lock); // created at 0; a race creates it twice, harmlessly
   double me = (double)ChartID();
   for(int i = 0; i < 50; i++)
     {
      if(GlobalVariableSetOnCondition(lock, me, 0))
        {
         GlobalVariableSet(LockTimeKey(symbol), (double)TimeGMT());
         return true;
        }
      // A holder that stopped while holding it (its chart closed): taken over after a while.
      double holder = GlobalVariableGet(lock);
      if(TimeGMT() - (datetime)GlobalVariableGet(LockTimeKey(symbol)) > LOCK_STALE_SECONDS && GlobalVariableSetOnCondition(lock, me, holder))
        {
         GlobalVariableSet(LockTimeKey(symbol), (double)TimeGMT());
         return true;
        }
      Sleep(20);
     }
   return false;
  }

void ReleaseLock(const string symbol)
  {
   GlobalVariableSetOnCondition(LockKey(symbol), 0, (double)ChartID());
  }

// Ack a signal handled before, from its stored outcome; never trade it again.
void AckStored(const string signalId, const string key)
  {
   double outcome = GlobalVariableGet(key);
   if(outcome > 0)
      SendAck(signalId, (ulong)outcome, "FILLED", "filled (acked again)", -1);
   else if(outcome == OUTCOME_EXPIRED)
      SendAck(signalId, 0, "EXPIRED", "signal expired; not traded", -1);
   else if(outcome == OUTCOME_INVALID)
      SendAck(signalId, 0, "REJECTED", "invalid signal", -1);
   else if(outcome == OUTCOME_SKIPPED)
      SendAck(signalId, 0, "REJECTED", "skipped by the execution policy", -1);
   else if(outcome <= OUTCOME_REJECTED && outcome > OUTCOME_SENDING)
     {
      long retcode = (long)(OUTCOME_REJECTED - outcome);
      SendAck(signalId, 0, "REJECTED", "retcode " + IntegerToString(retcode), retcode);
     }
  }

// Claim a signal for this chart: true when this chart is the one to trade it. Under the
// symbol's lock: a signal another chart has claimed, or handled, is never traded again.
bool Claim(const string signalId, const string symbol, const string key, const string comment)
  {
   if(!TakeLock(symbol)) return false; // busy: the next poll tries again
   bool mine = false;
   if(!GlobalVariableCheck(key))
     {
      Remember(key, OUTCOME_SENDING - (double)TimeGMT());
      mine = true;
     }
   else
     {
      double outcome = GlobalVariableGet(key);
      if(outcome <= OUTCOME_SENDING && TimeGMT() - (datetime)(OUTCOME_SENDING - outcome) > SENDING_STALE_SECONDS)
        {
         // Its chart stopped during the send: look the order up, never send it twice.
         ulong found = FindPlaced(symbol, comment);
         Remember(key, found > 0 ? (double)found : (double)(OUTCOME_REJECTED - 10011));
        }
     }
   ReleaseLock(symbol);
   if(!mine && GlobalVariableGet(key) > OUTCOME_SENDING)
      AckStored(signalId, key);
   return mine;
  }

void HandleSignal(const string obj)
  {
   string signalId = JsonString(obj, "signal_id");
   string symbol = JsonString(obj, "symbol");
   // This chart's symbol and timeframe only: an H1 signal is the H1 chart's.
   if(signalId == "" || symbol != _Symbol || JsonString(obj, "timeframe") != TimeframeName()) return;
   string key = "mt5p." + signalId;
   string comment = StringSubstr(signalId, 0, 31); // MT5 keeps 31 characters of a comment
   if(!Claim(signalId, symbol, key, comment)) return;
   string side = JsonString(obj, "side");
   double slPips = JsonNumber(obj, "sl_pips");
   double tpPips = JsonNumber(obj, "tp_pips");
   string expiresAt = JsonString(obj, "expires_at");
   datetime expires = IsoToTime(expiresAt);
   if(expires == 0 || TimeGMT() >= expires)
     {
      Remember(key, OUTCOME_EXPIRED);
      SendAck(signalId, 0, "EXPIRED", "signal expired at " + expiresAt + "; not traded", -1);
      return;
     }
   double volume = Volume(symbol);
   if((side != "BUY" && side != "SELL") || slPips <= 0 || tpPips <= 0 || volume <= 0)
     {
      Remember(key, OUTCOME_INVALID);
      SendAck(signalId, 0, "REJECTED", volume <= 0 ? "InpLots is below the symbol's SYMBOL_VOLUME_MIN" : "invalid signal: side " + side, -1);
      return;
     }
   double pip = SignalPipSize(JsonObject(obj, "meta"));
   if(pip <= 0)
     {
      pip = LocalPipSize((int)SymbolInfoInteger(symbol, SYMBOL_DIGITS), SymbolInfoDouble(symbol, SYMBOL_POINT));
      PrintFormat("%s: no meta.pip_size in the signal; pip %g from this terminal's digits and point", signalId, pip);
     }
   bool buy = (side == "BUY");
   string entryPolicy;
   int maxHoldBars;
   SignalPolicy(JsonObject(obj, "meta"), entryPolicy, maxHoldBars);
   string why = "";
   int verdict = PolicyEntry(entryPolicy, buy, why);
   if(verdict == 0)
     {
      Remember(key, OUTCOME_SKIPPED);
      SendAck(signalId, 0, "REJECTED", why, -1);
      return;
     }
   if(verdict < 0)
     {
      // The opposite position could not be closed now: nothing final, the next poll tries again.
      GlobalVariableDel(key);
      GlobalVariablesFlush();
      return;
     }
   // FOK or IOC as the symbol allows; neither (exchange execution): RETURN.
   if(!g_trade.SetTypeFillingBySymbol(symbol))
      g_trade.SetTypeFilling(ORDER_FILLING_RETURN);
   uint retcode = 0;
   for(int attempt = 0; attempt < 3; attempt++)
     {
      MqlTick tick;
      if(!SymbolInfoTick(symbol, tick)) { retcode = TRADE_RETCODE_PRICE_OFF; break; }
      double tickSize = SymbolInfoDouble(symbol, SYMBOL_TRADE_TICK_SIZE);
      double price = ToTick(buy ? tick.ask : tick.bid, tickSize, (int)SymbolInfoInteger(symbol, SYMBOL_DIGITS), 0);
      double sl, tp;
      Stops(symbol, buy, price, tick, slPips, tpPips, pip, sl, tp);
      if(buy)
         g_trade.Buy(volume, symbol, price, sl, tp, comment);
      else
         g_trade.Sell(volume, symbol, price, sl, tp, comment);
      retcode = g_trade.ResultRetcode();
      if(retcode == TRADE_RETCODE_INVALID_FILL && g_trade.RequestTypeFilling() != ORDER_FILLING_RETURN)
        {
         g_trade.SetTypeFilling(ORDER_FILLING_RETURN); // the symbol's flags lied: exchange execution
         continue;
        }
      bool moved = (retcode == TRADE_RETCODE_REQUOTE || retcode == TRADE_RETCODE_PRICE_CHANGED || retcode == TRADE_RETCODE_PRICE_OFF);
      if(!(moved && attempt == 0)) break; // one retry at the new price
     }
   if(retcode == TRADE_RETCODE_DONE || retcode == TRADE_RETCODE_DONE_PARTIAL || retcode == TRADE_RETCODE_PLACED)
     {
      ulong ticket = g_trade.ResultOrder();
      Remember(key, (double)ticket);
      RememberPosition(ticket, JsonString(obj, "timestamp"), maxHoldBars);
      SendAck(signalId, ticket, "FILLED", StringFormat("filled %.2f at %s", g_trade.ResultVolume(), DoubleToString(g_trade.ResultPrice(), _Digits)), -1);
     }
   else if(retcode == 0 || IsTransient(retcode))
     {
      // Not final: no answer from the server (retcode 0 after a failed send), or "not now".
      // Forget the claim unless the order exists after all; the next poll tries again.
      ulong found = FindPlaced(symbol, comment);
      if(found > 0)
        {
         Remember(key, (double)found);
         RememberPosition(found, JsonString(obj, "timestamp"), maxHoldBars);
         SendAck(signalId, found, "FILLED", "found in the terminal after an unclear answer", -1);
         return;
        }
      GlobalVariableDel(key);
      GlobalVariablesFlush();
      PrintFormat("%s: retcode %u (%s), not final; tried again at the next poll", signalId, retcode, g_trade.ResultRetcodeDescription());
     }
   else
     {
      Remember(key, OUTCOME_REJECTED - (double)retcode);
      SendAck(signalId, 0, "REJECTED", StringFormat("retcode %u: %s", retcode, g_trade.ResultRetcodeDescription()), (long)retcode);
     }
  }

void PollSignals()
  {
   string response;
   int status = ApiRequest("GET", "/ea/signals?status=PENDING&limit=100", "", response);
   if(status != 200) return;
   string items[];
   int n = JsonArray(response, "signals", items);
   for(int i = 0; i < n; i++)
      HandleSignal(items[i]);
  }

//+------------------------------------------------------------------+
//| Expert events                                                     |
//+------------------------------------------------------------------+
int OnInit()
  {
   if(InpApiKey == "")
     {
      Print("InpApiKey is empty: set it to one of the API's API_KEYS");
      return INIT_PARAMETERS_INCORRECT;
     }
   if(TimeframeName() == "")
      return INIT_PARAMETERS_INCORRECT;
   g_trade.SetExpertMagicNumber((ulong)InpMagic);
   g_trade.SetDeviationInPoints((ulong)InpDeviation);
   if(InpServerTimeZone == "auto" || InpServerTimeZone == "")
      PrintFormat("WARNING: InpServerTimeZone is auto: every bar is sent as %s. Bars on the other side of a daylight-saving "
                  "change will be an hour off, or refused where they would replace a bar stored with the other offset. "
                  "Set InpServerTimeZone (such as UTC+2/+3@US) before sending history that crosses a change.", ServerTimeZone());
   if(GlobalVariableCheck(LastBarKey()))
      g_lastSent = (datetime)GlobalVariableGet(LastBarKey());
   EventSetTimer(MathMax(1, InpPollSeconds));
   SendClosedBars();
   Reconcile(); // at start: trades closed while the EA was off are reported, differences found
   return INIT_SUCCEEDED;
  }

void OnDeinit(const int reason)
  {
   EventKillTimer();
  }

void OnTick()
  {
   static datetime lastBar = 0;
   datetime bar = iTime(_Symbol, _Period, 0);
   if(bar != lastBar)
     {
      lastBar = bar;
      SendClosedBars(); // a new bar opened: the previous one closed
      TimeExits();      // the time exit at that bar's close
     }
  }

void OnTimer()
  {
   SendClosedBars(); // also catches up after an outage and closes bars without ticks
   TimeExits();      // a bar that closed without a tick
   FlushOutbox();    // acks the API has not taken yet, whatever the signal's state there
   PollSignals();
   if(TimeGMT() - g_lastReconcile >= RECONCILE_SECONDS)
      Reconcile();   // reports trades, then compares positions with the API
  }
//+------------------------------------------------------------------+
