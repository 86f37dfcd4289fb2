//+------------------------------------------------------------------+
//| MT5PipelineEA.mq5 - the native MQL5 side of mt5-pipeline          |
//|                                                                  |
//| NOT COMPILED BY THE PROJECT: MetaEditor does not run on the      |
//| project's CI machines, so this file has never been compiled or   |
//| run by us. Compile it in MetaEditor (F7) and try it on a demo    |
//| account first. What is checked automatically: every route,       |
//| header and JSON field it uses exists in the API's /openapi.json  |
//| with that name and type (mt5_pipeline_tests/test_mql5_ea.py).    |
//|                                                                  |
//| For traders who will not run Python beside the terminal (the     |
//| alternative is `mt5-pipeline bridge`). On the chart it runs on:  |
//|  - POST /ingest each closed bar (on the first start the last     |
//|    InpHistoryBars; after a restart or an API outage, every bar   |
//|    since the last one the API took), in the trade server's time |
//|    with its zone (InpServerTimeZone): the API converts each bar  |
//|    to UTC with the offset in force at it; a bar the API refuses |
//|    (partial=true) is counted, printed and skipped, never resent |
//|    forever;                                                      |
//|  - every InpPollSeconds, GET /ea/signals; each signal for this   |
//|    chart's symbol is deduped by signal_id (terminal global       |
//|    variables "mt5p.<signal_id>", kept across restarts), refused  |
//|    past expires_at, traded with CTrade (SL/TP from pips exactly  |
//|    as the bridge: mt5_pipeline/bridge/orders.py), and acked with |
//|    POST /ea/ack (ticket, or the rejection with its retcode). A   |
//|    signal stays PENDING on the API until acked, so a lost ack is |
//|    sent again at the next poll, from the stored outcome.         |
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
// The trade server's time zone, as BRIDGE_SERVER_TIME_ZONE: UTC+2/+3@US (UTC+2 in winter, +3
// in summer, US dates: most FX brokers), an IANA zone (Europe/Athens) or a fixed UTC+3.
// "auto": today's offset for every bar, wrong for history across a daylight-saving change.
input string InpServerTimeZone = "auto";

#define MAX_POST_BARS 5000
// Outcomes kept in the global variable "mt5p.<signal_id>": a ticket (> 0) when filled,
// or one of these; a rejection is stored as -retcode.
#define OUTCOME_EXPIRED   0
#define OUTCOME_INVALID  -1
#define OUTCOME_SENDING  -2

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
          + JStr("server_time_zone", ServerTimeZone()) + "," + JBool("partial", true) + "}";
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
//| Orders: the same arithmetic as mt5_pipeline/bridge/orders.py      |
//+------------------------------------------------------------------+
double PipSize(const string symbol)
  {
   int digits = (int)SymbolInfoInteger(symbol, SYMBOL_DIGITS);
   double point = SymbolInfoDouble(symbol, SYMBOL_POINT);
   if(digits == 3 || digits == 5) return point * 10;                       // fractional pips
   if(digits == 2 && StringFind(symbol, "JPY") < 0) return point * 10;    // gold: pip 0.1
   return point;
  }

// SL/TP from pips, at least the stops level from the price the position closes at.
void Stops(const string symbol, const bool buy, const double price, const MqlTick &tick, const double slPips, const double tpPips, double &sl, double &tp)
  {
   int digits = (int)SymbolInfoInteger(symbol, SYMBOL_DIGITS);
   double point = SymbolInfoDouble(symbol, SYMBOL_POINT);
   double pip = PipSize(symbol);
   double sign = buy ? 1.0 : -1.0;
   sl = NormalizeDouble(price - sign * slPips * pip, digits);
   tp = NormalizeDouble(price + sign * tpPips * pip, digits);
   long level = SymbolInfoInteger(symbol, SYMBOL_TRADE_STOPS_LEVEL);
   if(level <= 0) return;
   double gap = level * point;
   if(buy)
     {
      sl = MathMin(sl, NormalizeDouble(tick.bid - gap, digits));
      tp = MathMax(tp, NormalizeDouble(tick.bid + gap, digits));
     }
   else
     {
      sl = MathMax(sl, NormalizeDouble(tick.ask + gap, digits));
      tp = MathMin(tp, NormalizeDouble(tick.ask - gap, digits));
     }
  }

double Volume(const string symbol)
  {
   double step = SymbolInfoDouble(symbol, SYMBOL_VOLUME_STEP);
   double vmax = SymbolInfoDouble(symbol, SYMBOL_VOLUME_MAX);
   double v = (step > 0) ? MathFloor(InpLots / step + 1e-9) * step : InpLots;
   return (vmax > 0) ? MathMin(v, vmax) : v;
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
//| Signals in, acks out                                              |
//+------------------------------------------------------------------+
string AckBody(const string signalId, const ulong ticket, const string status, const string message)
  {
   string ticketField = (ticket > 0) ? JInt("ticket", (long)ticket) : JNull("ticket");
   return "{" + JStr("signal_id", signalId) + "," + ticketField + "," + JStr("status", status) + "," + JStr("message", message) + "}";
  }

void SendAck(const string signalId, const ulong ticket, const string status, const string message)
  {
   string response;
   int code = ApiRequest("POST", "/ea/ack", AckBody(signalId, ticket, status, message), response);
   if(code != 200)
      PrintFormat("ack %s: HTTP %d (sent again at the next poll while the signal is pending)", signalId, code);
  }

void Remember(const string key, const double outcome)
  {
   GlobalVariableSet(key, outcome);
   GlobalVariablesFlush(); // on disk before anything else happens: this is the dedupe
  }

// Ack a signal handled before, from its stored outcome; never trade it again.
void AckStored(const string signalId, const string key)
  {
   double outcome = GlobalVariableGet(key);
   if(outcome > 0)
      SendAck(signalId, (ulong)outcome, "FILLED", "filled (acked again)");
   else if(outcome == OUTCOME_EXPIRED)
      SendAck(signalId, 0, "EXPIRED", "signal expired; not traded");
   else if(outcome == OUTCOME_INVALID)
      SendAck(signalId, 0, "REJECTED", "invalid signal");
   else if(outcome <= -10000)
      SendAck(signalId, 0, "REJECTED", StringFormat("retcode %d", (int)-outcome));
  }

void HandleSignal(const string obj)
  {
   string signalId = JsonString(obj, "signal_id");
   string symbol = JsonString(obj, "symbol");
   if(signalId == "" || symbol != _Symbol) return;
   string key = "mt5p." + signalId;
   string comment = StringSubstr(signalId, 0, 31); // MT5 keeps 31 characters of a comment
   if(GlobalVariableCheck(key))
     {
      if(GlobalVariableGet(key) == OUTCOME_SENDING)
        {
         // Stopped during the send: look the order up, never send it twice.
         ulong found = FindPlaced(symbol, comment);
         Remember(key, found > 0 ? (double)found : -10011.0);
        }
      AckStored(signalId, key);
      return;
     }
   string side = JsonString(obj, "side");
   double slPips = JsonNumber(obj, "sl_pips");
   double tpPips = JsonNumber(obj, "tp_pips");
   string expiresAt = JsonString(obj, "expires_at");
   datetime expires = IsoToTime(expiresAt);
   if(expires == 0 || TimeGMT() >= expires)
     {
      Remember(key, OUTCOME_EXPIRED);
      SendAck(signalId, 0, "EXPIRED", "signal expired at " + expiresAt + "; not traded");
      return;
     }
   if((side != "BUY" && side != "SELL") || slPips <= 0 || tpPips <= 0)
     {
      Remember(key, OUTCOME_INVALID);
      SendAck(signalId, 0, "REJECTED", "invalid signal: side " + side);
      return;
     }
   bool buy = (side == "BUY");
   Remember(key, OUTCOME_SENDING);
   g_trade.SetTypeFillingBySymbol(symbol);
   uint retcode = 0;
   for(int attempt = 0; attempt < 2; attempt++)
     {
      MqlTick tick;
      if(!SymbolInfoTick(symbol, tick)) { retcode = TRADE_RETCODE_PRICE_OFF; break; }
      double price = buy ? tick.ask : tick.bid;
      double sl, tp;
      Stops(symbol, buy, price, tick, slPips, tpPips, sl, tp);
      if(buy)
         g_trade.Buy(Volume(symbol), symbol, price, sl, tp, comment);
      else
         g_trade.Sell(Volume(symbol), symbol, price, sl, tp, comment);
      retcode = g_trade.ResultRetcode();
      bool moved = (retcode == TRADE_RETCODE_REQUOTE || retcode == TRADE_RETCODE_PRICE_CHANGED || retcode == TRADE_RETCODE_PRICE_OFF);
      if(!(moved && attempt == 0)) break; // one retry at the new price
     }
   if(retcode == TRADE_RETCODE_DONE || retcode == TRADE_RETCODE_DONE_PARTIAL || retcode == TRADE_RETCODE_PLACED)
     {
      ulong ticket = g_trade.ResultOrder();
      Remember(key, (double)ticket);
      SendAck(signalId, ticket, "FILLED", StringFormat("filled %.2f at %s", g_trade.ResultVolume(), DoubleToString(g_trade.ResultPrice(), _Digits)));
     }
   else
     {
      Remember(key, -(double)retcode);
      SendAck(signalId, 0, "REJECTED", StringFormat("retcode %u: %s", retcode, g_trade.ResultRetcodeDescription()));
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
     }
  }

void OnTimer()
  {
   SendClosedBars(); // also catches up after an outage and closes bars without ticks
   PollSignals();
  }
//+------------------------------------------------------------------+
