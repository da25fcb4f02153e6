"""The recall benchmark's facts in two splits that share no kind, value, wording or telling template.

`TUNING` is what the write recipe may be tuned on: the nine kinds the recipe was developed against (plain
first-person statements), plus tellings inside a question, said by the NPC, and in the third person.
`REPORT` is only ever reported: other kinds, other values, and shapes the tuning split does not use — requests,
two facts in one sentence, reported speech, facts the NPC offers unasked, facts after a fronted clause, and
facts spread over two sentences. `tests/test_recall_split.py` checks that the two stay disjoint.

A telling is a (user line, NPC line) exchange; either line may carry the values (`{v}`, `{w}`). Each `Ask` is
one fact of the telling: the questions that ask for it (worded unlike every telling) and a neutral opening of
the answer after which its value is scored.
"""

from __future__ import annotations

from dataclasses import dataclass

ACK = None
"""In a telling, the NPC line is one of the scenario's acknowledgements."""


@dataclass(frozen=True)
class Ask:
    """One fact of a telling: which value it is, how it is asked, and the answer's opening before the value."""

    slot: int
    questions: tuple[str, ...]
    answer_prefix: str


@dataclass(frozen=True)
class FactKind:
    """One kind of fact: its possible values (one per slot), how it is told, and the facts it asks for."""

    kind: str
    values: tuple[tuple[str, ...], ...]
    tellings: tuple[tuple[str, str | None], ...]
    asks: tuple[Ask, ...]
    shape: str
    """The telling's sentence shape: statement, question, request, npc, third_person, two_facts, ..."""


def _one(*values: str) -> tuple[tuple[str, ...], ...]:
    return tuple((v,) for v in values)


TUNING = (
    FactKind(
        "name",
        _one("Mira", "Tomas", "Elsa", "Ivo", "Greta", "Pavel", "Lina", "Oskar"),
        (("My daughter is called {v}.", ACK), ("By the way, my little girl's name is {v}.", ACK),
         ("I named my daughter {v}.", ACK)),
        (Ask(0, ("What is my daughter's name?", "Do you remember what my girl is called?"),
             "Your daughter's name is"),),
        "statement",
    ),
    FactKind(
        "code",
        _one("bluebell", "copperfish", "moonstone", "thistle", "saffron", "hawthorn", "marigold", "quartz"),
        (("The password for the cellar is {v}.", ACK), ("Keep this secret: the cellar password is {v}.", ACK),
         ("To open the cellar, say {v}.", ACK)),
        (Ask(0, ("What do I say to get into the cellar?", "Which word opens the cellar door?"),
             "The cellar password is"),),
        "statement",
    ),
    FactKind(
        "place",
        _one("the old mill", "the north stable", "the chapel yard", "the river ford", "the blacksmith's shed"),
        (("I left my horse at {v}.", ACK), ("My horse is waiting for me at {v}.", ACK),
         ("I tied my horse up at {v} this morning.", ACK)),
        (Ask(0, ("Where did I leave my horse?", "Where can I find my horse again?"), "Your horse is at"),),
        "statement",
    ),
    FactKind(
        "number",
        _one("seven", "twelve", "nineteen", "forty", "three", "sixty"),
        (("I have {v} sheep on my farm.", ACK), ("My farm keeps {v} sheep these days.", ACK),
         ("We counted {v} sheep in my flock.", ACK)),
        (Ask(0, ("How many sheep do I own?", "What is the size of my flock?"), "You have"),),
        "statement",
    ),
    FactKind(
        "day",
        _one("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"),
        (("Can you bake a cake for my wedding on {v}?", "Gladly, I will have it ready."),
         ("Will the inn be open on {v}? That is the day of my wedding.", "It will, and congratulations."),),
        (Ask(0, ("On which day is my wedding?", "When do I get married?"), "Your wedding is on"),),
        "question",
    ),
    FactKind(
        "relation",
        _one("a baker", "a sailor", "a carpenter", "a weaver", "a miner", "a fisherman"),
        (("My brother works as {v}.", ACK), ("My older brother is {v} by trade.", ACK),
         ("My brother earns his bread as {v}.", ACK)),
        (Ask(0, ("What does my brother do for a living?", "What is my brother's job?"), "Your brother is"),),
        "statement",
    ),
    FactKind(
        "possession",
        _one("red", "green", "yellow", "purple", "white", "black"),
        (("Have you seen a {v} cart outside? It is mine.", "I have not, but I will keep an eye out."),
         ("Did anyone touch my cart, the {v} one by the gate?", "Nobody has been near it."),),
        (Ask(0, ("What colour is my cart?", "How would I recognise my cart?"), "Your cart is"),),
        "question",
    ),
    FactKind(
        "preference",
        _one("cider", "mead", "plum wine", "black tea", "goat milk", "ginger beer"),
        (("What would you drink tonight?", "For me it is always {v}, nothing else."),
         ("Do you have a favourite drink?", "I only ever drink {v}."),),
        (Ask(0, ("What do you like to drink most?", "Which drink do you prefer?"), "My favourite drink is"),),
        "npc",
    ),
    FactKind(
        "plan",
        _one("Eastport", "Highmoor", "Saltmarsh", "Ravenhill", "Brookvale", "Stonebridge"),
        (("My friend Edda says we travel to {v} tomorrow.", ACK),
         ("Jorin, my travelling companion, wants to ride to {v} next.", ACK)),
        (Ask(0, ("Where am I going next?", "Which town is my next destination?"), "You are travelling to"),),
        "third_person",
    ),
)  # fmt: skip

REPORT = (
    FactKind(
        "pet",
        _one("Biscuit", "Shadow", "Pepper", "Rusty", "Juniper", "Clover"),
        (("Please save some scraps for {v}, my old hound.", "Of course, I will put some aside."),
         ("Could you fetch a bowl of water for {v}? He is my dog and he is thirsty.", "Right away."),),
        (Ask(0, ("What is my dog called?", "Remember the name of my hound?"), "Your dog is called"),),
        "request",
    ),
    FactKind(
        "sibling_town",
        (("Ada", "Dunmore"), ("Corin", "Wexfield"), ("Nell", "Marrowby"), ("Ulric", "Fenwick"),
         ("Tilda", "Ashcombe"), ("Bertil", "Greyhaven")),
        (("My sister {v} has lived in {w} for years.", ACK), ("My sister, {v}, keeps a shop in {w}.", ACK)),
        (Ask(0, ("What is the name of my sister?", "Who is my sister?"), "Your sister is"),
         Ask(1, ("In which town does my sister live?", "Where does my sister stay?"), "Your sister lives in")),
        "two_facts",
    ),
    FactKind(
        "age",
        _one("nine", "fourteen", "twenty-two", "thirty", "fifty-five", "eighty"),
        (("According to my mother, our family cow is {v} years old.", ACK),
         ("The vet told me my mare is {v} years old now.", ACK)),
        (Ask(0, ("How old did they say my animal is?", "What age did I mention for my animal?"),
             "It is"),),
        "reported_speech",
    ),
    FactKind(
        "npc_room",
        _one("four", "eleven", "fifteen", "twenty", "eight", "thirteen"),
        (("I will take a bed for the night.", "Then your room is number {v}, up the stairs."),
         ("Is there a bed free tonight?", "There is. You can sleep in room {v}."),),
        (Ask(0, ("Which room am I sleeping in?", "What number was my room again?"), "Your room is number"),),
        "npc",
    ),
    FactKind(
        "tool",
        _one("a silver hammer", "a bone needle", "an iron kettle", "a copper lantern", "a flint knife"),
        (("Before the fire went out, I put {v} under my bed for safekeeping.", ACK),
         ("After my father died, he left me {v}, and I never travel without it.", ACK)),
        (Ask(0, ("What is the thing I keep close?", "Which object did I say I treasure?"), "You keep"),),
        "fronted_clause",
    ),
    FactKind(
        "meeting",
        (("noon", "the fountain"), ("dusk", "the old bridge"), ("midnight", "the east gate"),
         ("dawn", "the grain store"), ("sunset", "the watchtower")),
        (("Tell Rurik to meet me at {w} at {v}.", "I will pass it on."),
         ("If Rurik asks, I will be waiting at {w} at {v}.", "I will tell him."),),
        (Ask(0, ("At what time am I meeting Rurik?", "When is my meeting with Rurik?"), "You are meeting him at"),
         Ask(1, ("Where did I arrange to meet Rurik?", "Where will Rurik find me?"), "You will meet him at")),
        "two_facts",
    ),
    FactKind(
        "debt",
        _one("nine silver coins", "three gold pieces", "a sack of oats", "two copper coins", "a jar of honey"),
        (("I borrowed something from the miller. I owe him {v}.", ACK),
         ("There is a debt I must pay. It is {v} to the miller.", ACK)),
        (Ask(0, ("How much do I owe the miller?", "What is my debt to the miller?"), "You owe the miller"),),
        "two_sentences",
    ),
    FactKind(
        "npc_secret",
        _one("the hollow oak", "the well bucket", "the loose hearthstone", "the chimney ledge", "the rain barrel"),
        (("Where do you hide the spare key?", "Between us, it is under {v}."),
         ("I locked myself out last night.", "Next time, look for the spare key in {v}."),),
        (Ask(0, ("Where is the spare key kept?", "Where would I find the spare key?"), "The spare key is in"),),
        "npc",
    ),
)  # fmt: skip

SPLITS = {"tuning": TUNING, "report": REPORT}
