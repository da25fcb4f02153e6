"""Everyday questions that check an adapter keeps the model's general ability, of kinds the recipe never trains on.

Written before any tuning and never tuned on. The write recipe's anchors (`templora_memory.probes.ANCHORS`) ask
about astronomy, calendar counts, animals, opposites, seasons, states of water, colours, arithmetic, greetings,
the senses, fruit, capitals and the sun; these ask about eight other kinds — jobs, tools, clothing, vehicles,
shapes, words, places in a town, and food — and `tests/test_recall_split.py` checks that no content word is shared.
Each question carries the answers that count (normalised exact match, any of them).
"""

from __future__ import annotations

GENERAL = (
    # jobs
    ("Who puts out fires?", ("firefighter", "firefighters", "fireman", "firemen")),
    ("Who flies an aeroplane?", ("pilot",)),
    ("Who looks after sick pets?", ("vet", "veterinarian")),
    ("Who teaches children at school?", ("teacher", "teachers")),
    ("Who brings letters to your house?", ("postman", "mail carrier", "postal worker", "mailman")),
    ("Who fixes teeth?", ("dentist",)),
    # tools
    ("What do you use to cut paper?", ("scissors",)),
    ("What do you write on a blackboard with?", ("chalk",)),
    ("What tool do you hit a nail with?", ("hammer",)),
    ("What do you use to unlock a door?", ("key",)),
    ("What do you look at to know the time?", ("clock", "watch")),
    ("What do you sweep the floor with?", ("broom",)),
    # clothing
    ("What do you wear on your hands to keep them warm?", ("gloves", "mittens")),
    ("What do you wear on your head?", ("hat", "cap", "helmet")),
    ("What do you put on your feet before going outside?", ("shoes", "boots", "socks")),
    ("What do short-sighted people wear?", ("glasses", "spectacles")),
    ("What do you wrap around your neck when it is chilly?", ("scarf",)),
    ("What do you wear to bed?", ("pajamas", "pyjamas", "nightgown")),
    # vehicles
    ("Which vehicle runs on rails?", ("train", "tram")),
    ("What has two wheels and pedals?", ("bicycle", "bike")),
    ("What carries people across the sea?", ("boat", "ship", "ferry")),
    ("What takes people from one country to another through the air?", ("plane", "aeroplane", "airplane")),
    ("What big vehicle carries many passengers along city streets?", ("bus",)),
    ("What vehicle takes astronauts into space?", ("rocket", "spaceship", "space shuttle")),
    # shapes
    ("How many sides does a pentagon have?", ("five", "5")),
    ("How many sides does a square have?", ("four", "4")),
    ("What shape is a football?", ("round", "sphere", "ball", "circle")),
    ("What shape has no corners and no straight sides?", ("circle", "oval")),
    ("How many corners does a rectangle have?", ("four", "4")),
    ("What shape is a coin?", ("round", "circle", "disc", "disk")),
    # words
    ("What letter comes after A in the alphabet?", ("b",)),
    ("What is the first letter of 'pencil'?", ("p",)),
    ("How many letters are in 'house'?", ("five", "5")),
    ("What is the plural of 'mouse'?", ("mice",)),
    ("What is the plural of 'child'?", ("children",)),
    ("Which rhymes with 'cat': hat or pen?", ("hat",)),
    # places in a town
    ("Where do you go to borrow books?", ("library",)),
    ("Where do very sick people go to get treated?", ("hospital",)),
    ("Where do you go to buy bread and cakes?", ("bakery", "baker", "shop", "store", "supermarket")),
    ("Where do children go to learn?", ("school",)),
    ("Where do planes take off and land?", ("airport", "runway")),
    ("Where can people watch lions and giraffes in a city?", ("zoo",)),
    # food
    ("What is the meal eaten in the morning called?", ("breakfast",)),
    ("What is bread mainly made from?", ("flour", "wheat")),
    ("In which kitchen appliance do you keep food fresh?", ("fridge", "refrigerator", "freezer")),
    ("What do you spread on toast that is made from cream?", ("butter",)),
    ("What snack is made by heating corn kernels until they burst?", ("popcorn",)),
    ("What do you pour on pancakes that comes from maple trees?", ("syrup", "maple syrup")),
)
